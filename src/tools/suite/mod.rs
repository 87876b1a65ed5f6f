//! The side-by-side benchmark suite: the same workloads, in one run on one machine,
//! against three servers this suite starts on 127.0.0.1, each a process of its own:
//! 1. a raw TCP echo (tokio; no encryption, no muxer) — the floor;
//! 2. a native rust-libp2p echo — ww's own swarm configuration (noise, yamux / QUIC),
//!    the echo a plain Rust stream handler, no wasm;
//! 3. a real `ww run` node serving the built-in `echo` cell.
//!
//! The client is this process, using [`crate::tools::bench`] for every server. Workload (f),
//! memory per live cell, runs against nodes of its own ([`memory`]); so does workload
//! (g), the Python and JavaScript cells against echo ([`guests`]).

mod guests;
mod memory;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, bail};
use futures::StreamExt as _;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, StreamProtocol};
use serde::Serialize;
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::process::{Child, Command};
use tokio_util::compat::FuturesAsyncReadCompatExt as _;

use crate::tools::bench::{self, Options, Report};
use guests::GuestsReport;
pub use memory::MemoryRow;
use ww::net::{self, BehaviourEvent};

/// The protocol the native rust-libp2p echo server answers.
pub const NATIVE_ECHO: StreamProtocol = StreamProtocol::new("/bench/echo/1.0.0");
const WW_ECHO: StreamProtocol = StreamProtocol::new("/ww/echo/0.1.0");

/// A baseline server for the suite.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Baseline {
    /// Raw TCP echo.
    Tcp,
    /// rust-libp2p echo with ww's swarm configuration.
    Native,
}

/// Serves a baseline echo on loopback until killed, printing its address(es) on stdout.
pub async fn serve_baseline(kind: Baseline) -> anyhow::Result<()> {
    match kind {
        Baseline::Tcp => {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            println!("/ip4/127.0.0.1/tcp/{}", listener.local_addr()?.port());
            loop {
                let (mut socket, _) = listener.accept().await?;
                socket.set_nodelay(true)?;
                tokio::spawn(async move {
                    let (reader, mut writer) = socket.split();
                    let _ = echo(reader, &mut writer).await;
                });
            }
        }
        Baseline::Native => {
            let keypair = libp2p::identity::Keypair::generate_ed25519();
            let mut swarm =
                net::build_swarm(keypair, vec![NATIVE_ECHO], &net::NetOptions::default())?;
            swarm.listen_on("/ip4/127.0.0.1/tcp/0".parse()?)?;
            swarm.listen_on("/ip4/127.0.0.1/udp/0/quic-v1".parse()?)?;
            let peer = *swarm.local_peer_id();
            loop {
                match swarm.select_next_some().await {
                    SwarmEvent::NewListenAddr { address, .. } => {
                        println!("{}", address.with_p2p(peer).expect("ours"));
                    }
                    SwarmEvent::Behaviour(BehaviourEvent::Router(inbound)) => {
                        tokio::spawn(async move {
                            let (mut reader, mut writer) =
                                tokio::io::split(inbound.stream.compat());
                            if tokio::io::copy(&mut reader, &mut writer).await.is_ok() {
                                let _ = writer.shutdown().await;
                            }
                        });
                    }
                    _ => {}
                }
            }
        }
    }
}

/// The baselines' echo: copies in 64 KiB chunks (what the echo cell's splice moves at
/// once), then closes the write side.
async fn echo<R, W>(reader: R, writer: &mut W) -> std::io::Result<()>
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    let mut reader = BufReader::with_capacity(64 << 10, reader);
    tokio::io::copy_buf(&mut reader, writer).await?;
    writer.shutdown().await
}

/// The machine the suite ran on.
#[derive(Debug, Serialize)]
pub struct Machine {
    /// CPU model, from /proc/cpuinfo.
    pub cpu: String,
    /// Cores available to this process.
    pub cores: usize,
}

/// One measurement: a workload over a transport against a server.
#[derive(Debug, Serialize)]
pub struct Row {
    /// Which workload.
    pub workload: &'static str,
    /// `tcp` or `quic`.
    pub transport: &'static str,
    /// `tcp` (raw), `native` (rust-libp2p) or `ww`.
    pub server: &'static str,
    /// The run with the median primary figure (bytes/s or streams/s).
    pub report: Report,
    /// The primary figure of every run, in the order they ran.
    pub runs: Vec<f64>,
}

/// ww's figure over a baseline's, for one workload and transport.
#[derive(Debug, Serialize)]
pub struct Ratio {
    /// Which workload.
    pub workload: &'static str,
    /// `tcp` or `quic`.
    pub transport: &'static str,
    /// What is compared (`bytes_per_s`, `streams_per_s` or `p50_done_us`).
    pub metric: &'static str,
    /// ww / native rust-libp2p.
    pub ww_over_native: f64,
    /// ww / raw TCP, where raw TCP ran the workload.
    pub ww_over_tcp: Option<f64>,
}

/// Everything one suite run measured.
#[derive(Debug, Serialize)]
pub struct SuiteReport {
    /// Where it ran.
    pub machine: Machine,
    /// Every measurement.
    pub rows: Vec<Row>,
    /// ww against each baseline.
    pub ratios: Vec<Ratio>,
    /// (f): resident memory per live idle cell.
    pub memory: Vec<MemoryRow>,
    /// (g): the Python and JavaScript cells against echo.
    pub guests: GuestsReport,
}

struct Workload {
    name: &'static str,
    streams: u64,
    concurrency: usize,
    bytes: usize,
    metrics: &'static [&'static str],
}

fn workloads(quick: bool) -> Vec<Workload> {
    let scale = |full: usize, small: usize| if quick { small } else { full };
    vec![
        Workload {
            name: "a: one stream, large echo",
            streams: 1,
            concurrency: 1,
            bytes: scale(64 << 20, 2 << 20),
            metrics: &["bytes_per_s"],
        },
        Workload {
            name: "b: 100 concurrent streams x 1 MiB",
            streams: scale(100, 10) as u64,
            concurrency: scale(100, 10),
            bytes: scale(1 << 20, 64 << 10),
            metrics: &["bytes_per_s"],
        },
        Workload {
            name: "c: 1-byte echo, fresh stream each, 64 in flight",
            streams: scale(5000, 200) as u64,
            concurrency: 64,
            bytes: 1,
            metrics: &["streams_per_s", "p50_done_us"],
        },
    ]
}

/// `ww bench-suite`'s arguments.
#[derive(Debug, clap::Args)]
pub struct SuiteArgs {
    /// Small workloads (seconds instead of minutes).
    #[arg(long)]
    pub quick: bool,
    /// Run every measurement this many times, the servers interleaved round by round, and
    /// report the median run.
    #[arg(long, default_value_t = 3)]
    pub repeat: usize,
    /// Also write every figure and ratio as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<std::path::PathBuf>,
    /// Measure the Python and JavaScript cells (workload g) even with --quick; a full
    /// run measures them unless --no-guests.
    #[arg(long, overrides_with = "no_guests")]
    pub guests: bool,
    /// Do not build or measure the Python and JavaScript cells.
    #[arg(long)]
    pub no_guests: bool,
    /// Where to build the Python and JavaScript cells (and their build tools)
    /// [default: bench-cells/ beside the ww binary].
    #[arg(long, value_name = "DIR")]
    pub cells_dir: Option<std::path::PathBuf>,
}

impl SuiteArgs {
    /// Runs `ww bench-suite` with this binary providing the servers, and prints the
    /// table.
    pub async fn run(self) -> anyhow::Result<()> {
        let exe = std::env::current_exe().context("cannot find the ww binary")?;
        let guests = if self.no_guests {
            Guests::Skip("--no-guests")
        } else if self.quick && !self.guests {
            Guests::Skip("--quick (add --guests to measure them)")
        } else {
            let dir = match self.cells_dir {
                Some(dir) => dir,
                None => exe
                    .parent()
                    .context("the ww binary has no directory")?
                    .join("bench-cells"),
            };
            Guests::Measure(dir)
        };
        let report = run_suite(&exe, self.quick, self.repeat, guests).await?;
        print!("{}", report.to_table());
        if let Some(path) = self.json {
            let text = serde_json::to_string_pretty(&report)? + "\n";
            std::fs::write(&path, text)
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        Ok(())
    }
}

/// Whether a suite run measures workload (g).
#[derive(Debug, Clone)]
pub enum Guests {
    /// Build the Python and JavaScript cells in this directory and measure them.
    Measure(std::path::PathBuf),
    /// Skip them, for this reason.
    Skip(&'static str),
}

/// Runs the suite with `exe` (the `ww` binary) providing the servers, each
/// measurement `repeat` times (the median run is reported, since these machines are
/// noisy). `quick` shrinks every workload (for tests).
pub async fn run_suite(
    exe: &Path,
    quick: bool,
    repeat: usize,
    guests: Guests,
) -> anyhow::Result<SuiteReport> {
    let work = tempfile::tempdir()?;
    let (_tcp_server, tcp_addrs) = start(exe, &["bench-server", "tcp"], 1).await?;
    let (_native_server, native_addrs) = start(exe, &["bench-server", "native"], 2).await?;
    let identity = work.path().join("id.key").display().to_string();
    let cache = work.path().join("cache").display().to_string();
    let ww_args = [
        "run",
        "--listen",
        "/ip4/127.0.0.1/tcp/0",
        "--listen",
        "/ip4/127.0.0.1/udp/0/quic-v1",
        "--identity",
        &identity,
        "--cache-dir",
        &cache,
        "--max-per-peer",
        "1000",
        "--queue-ms",
        "60000",
        "--no-mdns",
    ];
    let (_ww_server, ww_addrs) = start(exe, &ww_args, 2).await?;

    let raw_tcp = tcp_socket_addr(&tcp_addrs[0])?;
    let mut rows = Vec::new();
    for workload in workloads(quick) {
        for transport in ["tcp", "quic"] {
            let pick = |addrs: &[Multiaddr]| {
                addrs
                    .iter()
                    .find(|a| is_quic(a) == (transport == "quic"))
                    .cloned()
                    .expect("both transports")
            };
            let options = |addr: Multiaddr, protocol: StreamProtocol| Options {
                addr,
                protocol,
                streams: workload.streams,
                concurrency: workload.concurrency,
                bytes: workload.bytes,
                connections: 1,
                duration: None,
                verify_echo: true,
            };
            let mut servers = Vec::new();
            if transport == "tcp" {
                let raw = options(tcp_addrs[0].clone(), WW_ECHO);
                servers.push(("tcp", Target::RawTcp(raw, raw_tcp)));
            }
            let native = options(pick(&native_addrs), NATIVE_ECHO);
            servers.push(("native", Target::Libp2p(native)));
            servers.push(("ww", Target::Libp2p(options(pick(&ww_addrs), WW_ECHO))));
            let medians = interleaved(repeat, workload.metrics[0], &servers).await?;
            for ((server, _), (report, runs)) in servers.iter().zip(medians) {
                rows.push(Row {
                    workload: workload.name,
                    transport,
                    server,
                    report,
                    runs,
                });
            }
        }
    }
    let ratios = ratios(&rows, &workloads(quick));
    let mut memory = Vec::new();
    for count in if quick {
        &[50][..]
    } else {
        &[1_000, 10_000][..]
    } {
        memory.push(memory::measure(exe, *count).await?);
    }
    let guests = match guests {
        Guests::Measure(dir) => guests::measure(exe, &dir, quick, repeat).await?,
        Guests::Skip(reason) => guests::not_run(reason),
    };
    Ok(SuiteReport {
        machine: machine(),
        rows,
        ratios,
        memory,
        guests,
    })
}

/// A report's figure for `metric`.
fn figure(report: &Report, metric: &str) -> f64 {
    match metric {
        "bytes_per_s" => report.bytes_per_s,
        "streams_per_s" => report.streams_per_s,
        _ => report.done.p50_us as f64,
    }
}

/// A server a workload runs against.
enum Target {
    /// The raw TCP echo, at this socket address.
    RawTcp(Options, std::net::SocketAddr),
    /// A libp2p node (the native echo or `ww`).
    Libp2p(Options),
}

impl Target {
    async fn measure(&self) -> anyhow::Result<Report> {
        match self {
            Target::RawTcp(options, addr) => bench::run_tcp(options, *addr).await,
            Target::Libp2p(options) => bench::run(options, &|_| {}).await,
        }
    }
}

/// Runs the workload `repeat` times against every server, interleaved round by
/// round (the order reversed every other round), so drift in a noisy machine's speed
/// falls on all servers alike; returns for each server the run with the median
/// `metric` and that figure of every run, in the order they ran.
async fn interleaved(
    repeat: usize,
    metric: &str,
    servers: &[(&str, Target)],
) -> anyhow::Result<Vec<(Report, Vec<f64>)>> {
    let mut reports: Vec<Vec<Report>> = servers.iter().map(|_| Vec::new()).collect();
    for round in 0..repeat.max(1) {
        let mut order: Vec<usize> = (0..servers.len()).collect();
        if round % 2 == 1 {
            order.reverse();
        }
        for i in order {
            reports[i].push(servers[i].1.measure().await?);
        }
    }
    Ok(reports
        .into_iter()
        .map(|mut reports| {
            let runs: Vec<f64> = reports.iter().map(|r| figure(r, metric)).collect();
            reports.sort_by(|a, b| figure(a, metric).total_cmp(&figure(b, metric)));
            (reports.swap_remove(reports.len() / 2), runs)
        })
        .collect())
}

fn ratios(rows: &[Row], workloads: &[Workload]) -> Vec<Ratio> {
    let mut ratios = Vec::new();
    for workload in workloads {
        for transport in ["tcp", "quic"] {
            let find = |server: &str| {
                rows.iter()
                    .find(|r| {
                        r.workload == workload.name
                            && r.transport == transport
                            && r.server == server
                    })
                    .map(|r| &r.report)
            };
            let (Some(ww), Some(native)) = (find("ww"), find("native")) else {
                continue;
            };
            for &metric in workload.metrics {
                let value = |r: &Report| figure(r, metric);
                ratios.push(Ratio {
                    workload: workload.name,
                    transport,
                    metric,
                    ww_over_native: value(ww) / value(native),
                    ww_over_tcp: find("tcp").map(|tcp| value(ww) / value(tcp)),
                });
            }
        }
    }
    ratios
}

/// Starts a server process and reads `count` addresses from its stdout.
async fn start(exe: &Path, args: &[&str], count: usize) -> anyhow::Result<(Child, Vec<Multiaddr>)> {
    let mut child = Command::new(exe)
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {} {}", exe.display(), args.join(" ")))?;
    let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
    let mut addrs = Vec::new();
    while addrs.len() < count {
        let line = tokio::time::timeout(Duration::from_secs(120), lines.next_line()).await;
        match line.context("a server printed no address in 120 s")?? {
            Some(line) => addrs.push(
                line.parse()
                    .with_context(|| format!("not a multiaddr: {line}"))?,
            ),
            None => bail!("`{}` exited before listening", args.join(" ")),
        }
    }
    Ok((child, addrs))
}

fn is_quic(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| matches!(p, Protocol::QuicV1))
}

fn tcp_socket_addr(addr: &Multiaddr) -> anyhow::Result<std::net::SocketAddr> {
    let mut ip = None;
    let mut port = None;
    for protocol in addr.iter() {
        match protocol {
            Protocol::Ip4(v4) => ip = Some(std::net::IpAddr::V4(v4)),
            Protocol::Tcp(p) => port = Some(p),
            _ => {}
        }
    }
    Ok(std::net::SocketAddr::new(
        ip.context("no IPv4")?,
        port.context("no TCP port")?,
    ))
}

fn machine() -> Machine {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines().find_map(|line| {
                line.strip_prefix("model name")?
                    .split(':')
                    .nth(1)
                    .map(|m| m.trim().to_string())
            })
        })
        .unwrap_or_else(|| "unknown".into());
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    Machine { cpu, cores }
}

impl SuiteReport {
    /// The report as a Markdown table (as the README shows it).
    pub fn to_table(&self) -> String {
        let mut out = format!("{} ({} cores)\n\n", self.machine.cpu, self.machine.cores);
        out += "| workload | transport | server | streams/s | MB/s | p50 done (µs) | p99 done (µs) | errors |\n";
        out += "|---|---|---|---:|---:|---:|---:|---:|\n";
        for row in &self.rows {
            let r = &row.report;
            let errors: u64 = r.errors.values().sum();
            out += &format!(
                "| {} | {} | {} | {:.0} | {:.1} | {} | {} | {} |\n",
                row.workload,
                row.transport,
                row.server,
                r.streams_per_s,
                r.bytes_per_s / 1e6,
                r.done.p50_us,
                r.done.p99_us,
                errors
            );
        }
        out += "\n| workload | transport | metric | ww / native | ww / raw TCP |\n|---|---|---|---:|---:|\n";
        for ratio in &self.ratios {
            let tcp = ratio
                .ww_over_tcp
                .map_or("–".to_string(), |r| format!("{r:.2}"));
            out += &format!(
                "| {} | {} | {} | {:.2} | {} |\n",
                ratio.workload, ratio.transport, ratio.metric, ratio.ww_over_native, tcp
            );
        }
        out += "\n| f: live idle cells | connections | node RSS before (MiB) | with them (MiB) | KiB per cell | private KiB per cell | all live after (s) |\n|---:|---:|---:|---:|---:|---:|---:|\n";
        for row in &self.memory {
            out += &format!(
                "| {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.2} |\n",
                row.live,
                row.connections,
                row.rss_idle_kib as f64 / 1024.0,
                row.rss_live_kib as f64 / 1024.0,
                row.kib_per_cell,
                row.private_kib_per_cell,
                row.ramp_s
            );
        }
        out += &self.guests.to_table();
        out
    }
}
