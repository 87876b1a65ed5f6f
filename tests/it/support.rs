//! Shared test helpers: real `ww` processes on 127.0.0.1, the test cells, and a
//! rust-libp2p client (ww's own `Client`) to talk to them.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::Duration;

use futures::AsyncReadExt as _;
use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId, StreamProtocol};
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};
use ww::net::client::Client;
use ww::net::status::{self, Outcome};

/// The `ww` binary under test.
pub const WW: &str = env!("CARGO_BIN_EXE_ww");
/// Upper bound on anything a test waits for.
pub const PATIENCE: Duration = Duration::from_secs(120);

pub const ECHO: StreamProtocol = StreamProtocol::new("/ww/echo/0.1.0");
pub const SHA256: StreamProtocol = StreamProtocol::new("/ww/sha256/0.1.0");

/// Builds `tests/cells` for wasm32-wasip2 (once per process; cargo's lock makes
/// concurrent test processes wait for each other) and returns the path of `name`.
pub fn test_cell(name: &str) -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    let dir = BUILT.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests")
            .join("cells");
        let target = Path::new(env!("CARGO_TARGET_TMPDIR")).join("test-cells");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = std::process::Command::new(cargo)
            .current_dir(&root)
            .args([
                "build",
                "--release",
                "--locked",
                "--target",
                "wasm32-wasip2",
                "--target-dir",
            ])
            .arg(&target)
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .status()
            .expect("running cargo for tests/cells");
        assert!(status.success(), "building tests/cells failed");
        target.join("wasm32-wasip2").join("release")
    });
    // cargo names a cdylib's file with underscores and a binary's as the crate.
    [name.to_string(), name.replace('-', "_")]
        .into_iter()
        .map(|file| dir.join(format!("{file}.wasm")))
        .find(|path| path.exists())
        .unwrap_or_else(|| panic!("test cell {name} was not built in {}", dir.display()))
}

/// A `ww run` child process, killed when dropped.
pub struct Node {
    pub child: Child,
    pub peer: PeerId,
    pub tcp: Multiaddr,
    pub quic: Multiaddr,
    pub dir: tempfile::TempDir,
}

impl Node {
    /// Starts `ww run` on loopback TCP and QUIC (ephemeral ports) with `args` added.
    pub async fn start(args: &[&str]) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let identity = dir.path().join("identity.key");
        Self::start_with_identity(dir, &identity, args).await
    }

    /// Like [`Node::start`], logging with `RUST_LOG` set to `log`, or with ww's
    /// default filter if `None`.
    pub async fn start_with_log(args: &[&str], log: Option<&str>) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let identity = dir.path().join("identity.key");
        Self::spawn(dir, &identity, args, log).await
    }

    pub async fn start_with_identity(
        dir: tempfile::TempDir,
        identity: &Path,
        args: &[&str],
    ) -> Node {
        Self::spawn(dir, identity, args, Some("info,ww=debug")).await
    }

    async fn spawn(
        dir: tempfile::TempDir,
        identity: &Path,
        args: &[&str],
        log: Option<&str>,
    ) -> Node {
        let stderr = std::fs::File::create(dir.path().join("stderr.log")).unwrap();
        let mut command = Command::new(WW);
        match log {
            Some(filter) => command.env("RUST_LOG", filter),
            None => command.env_remove("RUST_LOG"),
        };
        let mut child = command
            .args([
                "run",
                "--listen",
                "/ip4/127.0.0.1/tcp/0",
                "--listen",
                "/ip4/127.0.0.1/udp/0/quic-v1",
                "--no-mdns",
            ])
            .arg("--identity")
            .arg(identity)
            .arg("--cache-dir")
            .arg(Path::new(env!("CARGO_TARGET_TMPDIR")).join("cell-cache"))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .expect("spawning ww run");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let (mut tcp, mut quic) = (None, None);
        while tcp.is_none() || quic.is_none() {
            let addr = next_listen_addr(&mut lines, dir.path()).await;
            if addr.iter().any(|p| matches!(p, Protocol::P2pCircuit)) {
                continue;
            } else if addr.iter().any(|p| matches!(p, Protocol::QuicV1)) {
                quic = Some(addr);
            } else {
                tcp = Some(addr);
            }
        }
        let tcp = tcp.unwrap();
        let Some(Protocol::P2p(peer)) = tcp.iter().last() else {
            panic!("no /p2p in {tcp}")
        };
        Node {
            child,
            peer,
            tcp,
            quic: quic.unwrap(),
            dir,
        }
    }

    /// What the node logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }

    /// Reads the node's counters through its stats protocol.
    pub async fn stats(&self, client: &Client) -> Stats {
        let peer = client.connect(&self.tcp).await.unwrap();
        let mut stream = client.open(peer, ww::node::STATS_PROTOCOL).await.unwrap();
        let mut text = String::new();
        stream.read_to_string(&mut text).await.unwrap();
        let value = |key: &str| {
            text.lines()
                .find_map(|line| line.strip_prefix(key)?.strip_prefix(' ')?.parse().ok())
                .unwrap_or_else(|| panic!("no `{key}` in stats:\n{text}"))
        };
        Stats {
            live: value("live"),
            succeeded: value("succeeded"),
            failed: value("failed"),
            refused: value("refused"),
        }
    }

    /// Waits (bounded) until exactly `live` instances are alive.
    pub async fn wait_live(&self, client: &Client, live: u64) {
        let what = format!("{live} live instances on {}", self.peer);
        eventually(&what, || async {
            (self.stats(client).await.live == live).then_some(())
        })
        .await
    }

    /// Waits (bounded) until no instance is alive; returns the counters then.
    pub async fn wait_idle(&self, client: &Client) -> Stats {
        let what = format!("no live instance on {}", self.peer);
        eventually(&what, || async {
            let stats = self.stats(client).await;
            (stats.live == 0).then_some(stats)
        })
        .await
    }

    /// Waits (bounded) until the node has logged a line containing `text`; returns
    /// that line.
    pub async fn wait_logged(&self, text: &str) -> String {
        let what = format!("`{text}` in the log of {}", self.peer);
        eventually(&what, || async {
            self.log()
                .lines()
                .find(|line| line.contains(text))
                .map(str::to_string)
        })
        .await
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    pub live: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub refused: u64,
}

/// Polls `check` until it gives `Some`, pausing a little longer after each miss
/// (10 ms, doubling up to 200 ms), for at most [`PATIENCE`]; panics naming `what`
/// otherwise. The one way these tests wait for what a node cannot announce (a DHT
/// record landing, a count reaching a value).
pub async fn eventually<T, F>(what: &str, mut check: impl FnMut() -> F) -> T
where
    F: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let mut pause = Duration::from_millis(10);
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not within {PATIENCE:?}: {what}"
        );
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(200));
    }
}

/// Deterministic, non-repeating-looking test bytes.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

/// Sends `data` on a new stream, closes the write side, and reads the answer to EOF.
pub async fn request(
    client: &Client,
    peer: PeerId,
    protocol: StreamProtocol,
    data: &[u8],
) -> std::io::Result<Vec<u8>> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio_util::compat::FuturesAsyncReadCompatExt as _;
    let stream = client
        .open(peer, protocol)
        .await
        .map_err(std::io::Error::other)?;
    let (mut reader, mut writer) = tokio::io::split(stream.compat());
    let send = async {
        let mut data = data;
        tokio::io::copy(&mut data, &mut writer).await?;
        writer.shutdown().await
    };
    let receive = async {
        let mut answer = Vec::new();
        reader.read_to_end(&mut answer).await?;
        Ok::<_, std::io::Error>(answer)
    };
    let (sent, answer) = tokio::join!(send, receive);
    sent?;
    answer
}

/// Starts `ww` with `args` and every stdio stream piped; killed when dropped.
pub fn spawn_ww(args: &[&str]) -> Child {
    Command::new(WW)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawning ww")
}

/// Runs `ww` with `args`, feeding it `stdin`; returns (success, stdout, stderr).
pub async fn ww(args: &[&str], stdin: &[u8]) -> (bool, Vec<u8>, String) {
    outcome_of_process(spawn_ww(args), stdin).await
}

/// Feeds `stdin` to `child` (spawned with every stdio stream piped) and waits for it;
/// returns (success, stdout, stderr).
pub async fn outcome_of_process(mut child: Child, stdin: &[u8]) -> (bool, Vec<u8>, String) {
    use tokio::io::AsyncWriteExt as _;
    let mut input = child.stdin.take().unwrap();
    let stdin = stdin.to_vec();
    let feed = tokio::spawn(async move {
        let _ = input.write_all(&stdin).await;
    });
    let output = tokio::time::timeout(PATIENCE, child.wait_with_output())
        .await
        .expect("ww timed out")
        .unwrap();
    let _ = feed.await;
    (
        output.status.success(),
        output.stdout,
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Opens `protocol+status`, sends `input`, closes the write side, and reads the
/// framed answer: the payload and the node's verdict.
pub async fn outcome_of(
    client: &Client,
    peer: PeerId,
    input: &[u8],
    protocol: &str,
) -> (Vec<u8>, Outcome) {
    use tokio::io::AsyncWriteExt as _;
    use tokio_util::compat::FuturesAsyncReadCompatExt as _;
    let protocol = StreamProtocol::try_from_owned(protocol.into()).unwrap();
    let offer = status::offer(&protocol, status::Caller::Peer);
    let (stream, chosen) = client.open_first(peer, offer).await.unwrap();
    assert_eq!(
        status::parse(&chosen),
        (protocol.as_ref(), status::Variant::Status)
    );
    let (mut reader, mut writer) = tokio::io::split(stream.compat());
    let _ = writer.write_all(input).await;
    let _ = writer.shutdown().await;
    let mut payload = Vec::new();
    let answer =
        tokio::time::timeout(PATIENCE, status::read_answer(&mut reader, &mut payload)).await;
    let outcome = answer.expect("stream never ended").unwrap();
    (payload, outcome)
}

/// Asserts that `outcome` is a failure whose reason contains `reason`.
pub fn assert_failed(outcome: &Outcome, reason: &str) {
    match outcome {
        Outcome::Failure(got) => assert!(got.contains(reason), "expected `{reason}` in `{got}`"),
        Outcome::Success => panic!("expected a failure ({reason}), got success"),
    }
}

/// `--cell` for a test cell on `/test/<name>/1`.
pub fn cell_flag(name: &str) -> String {
    format!("/test/{name}/1={}", test_cell(name).display())
}

/// Open file descriptors of a process, from /proc (Linux).
pub fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// Resident memory of a process, from /proc (Linux).
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// A loopback address with a port that was free a moment ago.
pub fn free_local_addr() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// `GET path` over plain HTTP/1.1; returns the status code and the body.
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut last_error = None;
    for _ in 0..100 {
        match tokio::net::TcpStream::connect(addr).await {
            Ok(mut socket) => {
                let request =
                    format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
                socket.write_all(request.as_bytes()).await.unwrap();
                let mut response = String::new();
                socket.read_to_string(&mut response).await.unwrap();
                let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
                let code = head.split_whitespace().nth(1).unwrap().parse().unwrap();
                return (code, body.to_string());
            }
            Err(error) => last_error = Some(error),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("cannot reach {addr}: {last_error:?}");
}

/// Builds the Python cell (`protocols/wc`) with its own build script — which installs
/// the pinned componentize-py into a virtualenv under the target directory — once
/// per test process, and returns the component's path.
pub fn python_cell() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let out = Path::new(env!("CARGO_TARGET_TMPDIR"))
                .join("python")
                .join("wc.wasm");
            std::fs::create_dir_all(out.parent().unwrap()).unwrap();
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("protocols/wc/build.sh");
            let status = std::process::Command::new("bash")
                .arg(&script)
                .arg(&out)
                .status()
                .expect("running protocols/wc/build.sh");
            assert!(status.success(), "building the Python cell failed");
            out
        })
        .clone()
}

/// Where the heavy guests' components and build tools go under the target directory;
/// `ww bench-suite --cells-dir` takes it so its builds are shared with the tests'.
pub fn guests_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("guests")
}

/// Builds the JavaScript cell (`protocols/echo-js`) with its own build script — which
/// installs the pinned componentize-js with npm under the target directory, and skips
/// the build when the component is up to date — once per test process, and returns the
/// component's path; `None`, saying why, when npm is not installed.
pub fn javascript_cell() -> Option<PathBuf> {
    static BUILT: OnceLock<Option<PathBuf>> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let npm = std::process::Command::new("npm")
                .arg("--version")
                .stdout(Stdio::null())
                .status();
            if !npm.is_ok_and(|status| status.success()) {
                eprintln!(
                    "skipped: npm is not installed (the JavaScript cell is built with \
                     componentize-js from npm)"
                );
                return None;
            }
            let out = guests_dir().join("echo-js.wasm");
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("protocols/echo-js/build.sh");
            let status = std::process::Command::new("bash")
                .arg(&script)
                .arg(&out)
                .status()
                .expect("running protocols/echo-js/build.sh");
            assert!(status.success(), "building the JavaScript cell failed");
            Some(out)
        })
        .clone()
}

/// The two halves of a `protocol+status` stream, opened on `peer` and left open.
pub async fn open_status(
    client: &Client,
    peer: PeerId,
    protocol: &str,
) -> (
    tokio::io::ReadHalf<tokio_util::compat::Compat<libp2p::Stream>>,
    tokio::io::WriteHalf<tokio_util::compat::Compat<libp2p::Stream>>,
) {
    use tokio_util::compat::FuturesAsyncReadCompatExt as _;
    let protocol = StreamProtocol::try_from_owned(protocol.into()).unwrap();
    let stream = client
        .open(peer, status::status_variant(&protocol))
        .await
        .unwrap();
    tokio::io::split(stream.compat())
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `--base-port` for a `ww devnet` of `n` nodes that can run at its defaults: the
/// nodes' ports (see [`free_port_block`]) and the dashboards' 1000 above them were
/// all free a moment ago.
pub fn free_devnet_base(n: u16) -> u16 {
    for _ in 0..100 {
        let base = free_port_block(n);
        let dashboards_free = base.checked_add(1000 + n).is_some()
            && (base + 1000..base + 1000 + n)
                .all(|port| std::net::TcpListener::bind(("127.0.0.1", port)).is_ok());
        if dashboards_free {
            return base;
        }
    }
    panic!("no devnet base port with {n} free node and dashboard ports");
}

/// `n` consecutive ports, each free for both TCP and UDP on 127.0.0.1 a moment ago.
pub fn free_port_block(n: u16) -> u16 {
    for _ in 0..100 {
        let base = free_tcp_port();
        if base.checked_add(n).is_none() {
            continue;
        }
        let free = (base..base + n).all(|port| {
            std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
                && std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok()
        });
        if free {
            return base;
        }
    }
    panic!("no block of {n} free ports");
}

/// Starts a node bootstrapped from `bootstrap` (if any), with `args`. No DHT flag: on
/// loopback the LAN DHT, which every node serves, is what finds peers and cells.
pub async fn dht_node(bootstrap: Option<&Node>, args: &[&str]) -> Node {
    let mut all = Vec::new();
    let addr = bootstrap.map(|node| node.tcp.to_string());
    if let Some(addr) = &addr {
        all.extend(["--bootstrap", addr]);
    }
    all.extend(args);
    Node::start(&all).await
}

/// Runs `ww run` expecting it to fail at start-up; returns its stderr.
pub async fn run_fails(args: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let identity = dir.path().join("id.key");
    let output = Command::new(WW)
        .args(["run", "--listen", "/ip4/127.0.0.1/tcp/0", "--identity"])
        .arg(&identity)
        .args(args)
        .output();
    let output = tokio::time::timeout(PATIENCE, output)
        .await
        .unwrap()
        .unwrap();
    assert!(
        !output.status.success(),
        "ww run {args:?} should have failed"
    );
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// CPU ticks (user + system, in clock ticks) that process `pid` has used.
pub fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // The fields after the command name, which is in parentheses.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// Measured, not asserted: holds 10 streams open on `protocol` (served by `cell`) and
/// prints the mean instantiation time and the node's RSS growth per live instance.
pub async fn print_instance_cost(
    node: &Node,
    client: &Client,
    peer: PeerId,
    protocol: StreamProtocol,
    admin: std::net::SocketAddr,
    cell: &str,
    what: &str,
) {
    const HELD: u64 = 10;
    let pid = node.child.id().unwrap();
    let before = rss_kib(pid);
    let mut held = Vec::new();
    for _ in 0..HELD {
        held.push(client.open(peer, protocol.clone()).await.unwrap());
    }
    node.wait_live(client, HELD).await;
    let after = rss_kib(pid);
    let (_, metrics) = http_get(admin, "/metrics").await;
    let metric = |name: &str| -> f64 {
        let line = metrics
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no {name}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    let label = format!("{{cell=\"{cell}\"}}");
    let instantiations = metric(&format!("ww_instantiate_seconds_count{label}"));
    let mean = metric(&format!("ww_instantiate_seconds_sum{label}")) / instantiations;
    eprintln!(
        "{what}: {:.2} ms mean instantiation over {instantiations} instances; \
         {} KiB RSS per live instance ({HELD} live)",
        mean * 1e3,
        after.saturating_sub(before) / HELD
    );
}

/// The next address `ww run` prints on stdout (`lines`), within [`PATIENCE`]; panics
/// with its log (`stderr.log` in `dir`) if it exits first.
pub async fn next_listen_addr(
    lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    dir: &Path,
) -> Multiaddr {
    let line = tokio::time::timeout(PATIENCE, lines.next_line())
        .await
        .expect("ww run printed no address in time")
        .unwrap();
    let Some(line) = line else {
        panic!(
            "ww run exited early:\n{}",
            std::fs::read_to_string(dir.join("stderr.log")).unwrap_or_default()
        );
    };
    line.parse()
        .unwrap_or_else(|e| panic!("not a multiaddr: {line}: {e}"))
}
