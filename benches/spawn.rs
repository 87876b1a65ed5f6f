//! The cost of one stream's instance, without the network: a new `Store`, instantiate
//! the built-in `echo` cell from its `CellPre`, run it on a stream that is already at
//! EOF (so the guest returns at once), end the stream, drop everything — including the
//! two tasks that adapt the stream halves to `wasi:io`.
//!
//! Measured on a multi-threaded tokio runtime (as `ww run` uses, where waking those
//! tasks on other threads is part of the cost) and on a current-thread runtime (the
//! CPU cost alone).
//!
//! `cargo bench --bench spawn`

use criterion::{Criterion, criterion_group, criterion_main};
use ww::cell::{CellOptions, PeerWriter, PoolSize, Runtime, builtin};

fn spawn_on(c: &mut Criterion, name: &str, tokio: tokio::runtime::Runtime) {
    let _inside = tokio.enter();
    let pool = PoolSize {
        instances: 64,
        memory_bytes: 64 << 20,
    };
    let runtime = Runtime::new(Some(pool), Default::default(), None).expect("an engine");
    let echo = builtin::find("echo").expect("built in");
    let options = CellOptions {
        name: "echo".into(),
        limits: Default::default(),
        mode: None,
        dial: Default::default(),
        network: None,
    };
    let cell = runtime
        .load("built-in echo", echo.wasm, &options)
        .expect("it loads");

    let never = tokio_util::sync::CancellationToken::new();
    c.bench_function(name, |b| {
        b.to_async(&tokio).iter(|| async {
            let writer = PeerWriter::new(tokio::io::sink(), false);
            cell.serve(&["/ww/echo/0.1.0"], tokio::io::empty(), writer, &never)
                .await
                .expect("echo succeeds");
        })
    });
}

fn spawn(c: &mut Criterion) {
    let multi = tokio::runtime::Runtime::new().expect("a tokio runtime");
    spawn_on(c, "echo cell spawn, multi-thread runtime", multi);
    let single = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    spawn_on(c, "echo cell spawn, current-thread runtime", single);
}

criterion_group!(benches, spawn);
criterion_main!(benches);
