//! Start-up: bad input is a clear error naming the culprit; the identity persists.

use crate::support::{Node, WW, run_fails, test_cell};

#[tokio::test(flavor = "multi_thread")]
async fn bad_cells_are_refused_with_the_file_named() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.wasm");
    std::fs::write(&garbage, b"this is not wasm at all").unwrap();
    let core = dir.path().join("core.wasm");
    std::fs::write(&core, b"\0asm\x01\0\0\0").unwrap();
    let broken = dir.path().join("broken.wasm");
    std::fs::write(&broken, b"\0asm\x0d\0\x01\0\xff\xff").unwrap();
    let missing = dir.path().join("missing.wasm");
    let no_run = test_cell("no-run");
    let extra_import = test_cell("extra-import");

    let cases = [
        (&garbage, "no WebAssembly header"),
        (&core, "core WebAssembly module"),
        (&broken, "invalid component"),
        (&missing, "cannot read"),
        (
            &no_run,
            "does not export `wasi:cli/run@0.2.x` (exports: test:no-run/greet)",
        ),
        (
            &extra_import,
            "imports test:extra/missing, which a ww node does not provide",
        ),
    ];
    for (file, reason) in cases {
        let flag = format!("/x/1={}", file.display());
        let err = run_fails(&["--cell", &flag]).await;
        assert!(
            err.contains(&file.display().to_string()),
            "the file is not named: {err}"
        );
        assert!(err.contains(reason), "expected `{reason}` in: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_forced_mode_that_cannot_work_is_refused() {
    let program = test_cell("stdio-echo");
    let flag = format!("/x/1={}", program.display());
    let err = run_fails(&["--cell", &flag, "--cell-mode", "/x/1=connection"]).await;
    assert!(
        err.contains("mode = \"connection\", but it does not import `wetware:streams"),
        "{err}"
    );
    let err = run_fails(&["--cell", &flag, "--cell-mode", "/x/1=pipes"]).await;
    assert!(err.contains("unknown mode `pipes`"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_flags_and_config_are_clear_errors() {
    let err = run_fails(&["--listen", "not-a-multiaddr"]).await;
    assert!(err.contains("not-a-multiaddr"), "{err}");
    let err = run_fails(&["--cell", "echo=x.wasm"]).await;
    assert!(err.contains("must start with `/`"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("ww.toml");
    std::fs::write(
        &config,
        "[cells.x]\nprotocol = \"/x/1\"\nwasm = \"x.wasm\"\nbogus = 1\n",
    )
    .unwrap();
    let err = run_fails(&["--config", &config.display().to_string()]).await;
    assert!(
        err.contains("invalid config file") && err.contains("bogus"),
        "{err}"
    );

    let identity = dir.path().join("bad.key");
    std::fs::write(&identity, b"garbage").unwrap();
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&identity, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let output = tokio::process::Command::new(WW)
        .args(["run", "--listen", "/ip4/127.0.0.1/tcp/0", "--identity"])
        .arg(&identity)
        .output()
        .await
        .unwrap();
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        err.contains("bad.key") && err.contains("not a libp2p private key"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_identity_persists_across_restarts() {
    let keep = tempfile::tempdir().unwrap();
    let identity = keep.path().join("node.key");
    let first = Node::start_with_identity(tempfile::tempdir().unwrap(), &identity, &[]).await;
    let peer = first.peer;
    drop(first);
    let second = Node::start_with_identity(tempfile::tempdir().unwrap(), &identity, &[]).await;
    assert_eq!(second.peer, peer);
}

#[tokio::test(flavor = "multi_thread")]
async fn compiled_cells_are_cached_across_restarts() {
    let cache = tempfile::tempdir().unwrap();
    let dir = cache.path().join("cells").display().to_string();
    // A later --cache-dir wins over the one the test harness passes.
    let first = Node::start(&["--cache-dir", &dir]).await;
    let log = first.log();
    assert!(
        log.contains("cached=false") && !log.contains("cached=true"),
        "{log}"
    );
    drop(first);
    let entries = std::fs::read_dir(cache.path().join("cells"))
        .unwrap()
        .count();
    assert_eq!(
        entries,
        ww::cell::builtin::BUILTINS
            .iter()
            .filter(|b| b.default)
            .count(),
        "one entry per default built-in cell"
    );

    let second = Node::start(&["--cache-dir", &dir]).await;
    let log = second.log();
    assert!(
        log.contains("cached=true") && !log.contains("cached=false"),
        "{log}"
    );
    let (ok, out, err) = crate::support::ww(
        &["dial", &second.tcp.to_string(), "/ww/echo/0.1.0"],
        b"warm",
    )
    .await;
    assert!(ok, "{err}");
    assert_eq!(out, b"warm");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_nodes_own_protocols_are_refused_as_cells() {
    for protocol in ["/ipfs/ping/1.0.0", "/ww/kad/1.0.0", "/libp2p/autonat/1.0.0"] {
        let flag = format!("{protocol}=builtin:echo");
        let err = run_fails(&["--no-mdns", "--cell", &flag]).await;
        assert!(
            err.contains(&format!("protocol {protocol} is reserved")),
            "{err}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn impossible_limits_stop_start_up_naming_the_key() {
    let err = run_fails(&["--no-mdns", "--memory-mb", "17592186044418"]).await;
    assert!(
        err.contains("memory_mb = 17592186044418 is more than"),
        "{err}"
    );
    let err = run_fails(&["--no-mdns", "--memory-mb", "17592186044416"]).await;
    assert!(err.contains("memory_mb"), "{err}");
    assert!(!err.contains("0x0 bytes"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("ww.toml");
    std::fs::write(&config, "[limits]\nidle_s = 18446744073709551615\n").unwrap();
    let err = run_fails(&["--no-mdns", "--config", config.to_str().unwrap()]).await;
    assert!(err.contains("[limits]") && err.contains("idle_s"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn sizes_take_units() {
    let node = Node::start(&["--memory-mb", "32MiB"]).await;
    assert!(node.log().contains("memory_mb: 32"), "{}", node.log());
    let err = run_fails(&["--no-mdns", "--memory-mb", "lots"]).await;
    assert!(err.contains("`lots` is not a size"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_port_in_use_or_listed_twice_is_named() {
    let first = Node::start(&[]).await;
    let taken = first.tcp.to_string();
    let port = first.tcp.iter().find_map(|p| match p {
        libp2p::multiaddr::Protocol::Tcp(port) => Some(port),
        _ => None,
    });
    let taken = taken.split("/p2p/").next().unwrap().to_string();
    let err = run_fails(&["--no-mdns", "--listen", &taken]).await;
    assert!(
        err.contains(&format!("TCP port {} is in use", port.unwrap())),
        "{err}"
    );

    let free = format!("/ip4/127.0.0.1/tcp/{}", crate::support::free_tcp_port());
    let err = run_fails(&["--no-mdns", "--listen", &free, "--listen", &free]).await;
    assert!(
        err.contains(&format!("listen address {free} is given twice")),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unusable_identity_file_is_a_clear_error() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.key");
    std::fs::write(&empty, b"").unwrap();
    std::fs::set_permissions(&empty, std::fs::Permissions::from_mode(0o600)).unwrap();
    let err = identity_fails(&empty).await;
    assert!(err.contains("empty.key is empty"), "{err}");
    assert!(!err.contains("rsa"), "{err}");

    // A good key that others may read is refused, as ssh refuses one.
    let open = dir.path().join("open.key");
    ww::identity::load_or_create(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = identity_fails(&open).await;
    assert!(
        err.contains("accessible by other users (mode 0644)"),
        "{err}"
    );
}

async fn identity_fails(identity: &std::path::Path) -> String {
    let output = tokio::process::Command::new(WW)
        .args([
            "run",
            "--no-mdns",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--identity",
        ])
        .arg(identity)
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tampered_cache_entry_is_recompiled_not_run() {
    let cache = tempfile::tempdir().unwrap();
    let dir = cache.path().join("cells");
    let flag = dir.display().to_string();
    drop(Node::start(&["--cache-dir", &flag]).await);
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let mut bytes = std::fs::read(&path).unwrap();
        for at in (64..bytes.len()).step_by(61) {
            bytes[at] = 0xcc; // int3: what a SIGTRAP looks like
        }
        std::fs::write(&path, &bytes).unwrap();
    }
    let node = Node::start(&["--cache-dir", &flag]).await;
    let log = node.log();
    assert!(log.contains("bad cache entry"), "{log}");
    assert!(!log.contains("cached=true"), "{log}");
    let (ok, out, err) =
        crate::support::ww(&["dial", &node.tcp.to_string(), "/ww/echo/0.1.0"], b"safe").await;
    assert!(ok, "{err}");
    assert_eq!(out, b"safe");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_first_node_starts_without_warnings() {
    // The default log filter, as a newcomer gets it.
    let node = crate::support::Node::start_with_log(&[], None).await;
    // libp2p-kad's automatic bootstrap fires 500 ms after the first listen address.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let log = node.log();
    assert!(
        !log.lines()
            .any(|l| l.contains(" WARN ") || l.contains(" ERROR ")),
        "{log}"
    );
}
