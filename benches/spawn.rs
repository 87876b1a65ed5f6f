//! The cost of one stream's instance, without the network: a new `Store`, instantiate
//! the built-in `echo` cell from its `CellPre`, run it on a stream that is already at
//! EOF (so the guest returns at once), end the stream, drop everything — including the
//! two tasks that adapt the stream halves to `wasi:io`.
//!
//! Measured on a multi-threaded tokio runtime (as `ww run` uses, where waking those
//! tasks on other threads is part of the cost) and on a current-thread runtime (the
//! CPU cost alone); and once more without the idle limit, whose watchdog is the one
//! timer each stream registers (what that timer costs).
//!
//! `cargo bench --bench spawn`

use criterion::{Criterion, criterion_group, criterion_main};
use ww::cell::{CellOptions, PeerWriter, PoolSize, Runtime, builtin};
use ww::limits::Limits;

fn spawn_on(c: &mut Criterion, name: &str, tokio: tokio::runtime::Runtime, limits: Limits) {
    let _inside = tokio.enter();
    let pool = PoolSize {
        instances: 64,
        memory_bytes: 64 << 20,
    };
    let runtime = Runtime::new(Some(pool), Default::default(), None).expect("an engine");
    let echo = builtin::find("echo").expect("built in");
    let options = CellOptions {
        name: "echo".into(),
        limits,
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
    let multi = || tokio::runtime::Runtime::new().expect("a tokio runtime");
    let single = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime")
    };
    let limits = Limits::default();
    spawn_on(c, "echo cell spawn, multi-thread runtime", multi(), limits);
    spawn_on(
        c,
        "echo cell spawn, current-thread runtime",
        single(),
        limits,
    );
    // The same without the idle watchdog's timer: what that timer costs.
    let no_idle = Limits {
        idle_s: 0,
        ..limits
    };
    spawn_on(
        c,
        "echo cell spawn, multi-thread runtime, no idle limit",
        multi(),
        no_idle,
    );
}

criterion_group!(benches, spawn);
criterion_main!(benches);
