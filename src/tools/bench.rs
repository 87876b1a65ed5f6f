//! `ww bench`: a load generator for any node and protocol. It opens streams, sends
//! each a payload, half-closes, reads the answer to EOF, and reports stream rate,
//! throughput, latency percentiles and errors by kind, as text or JSON.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use hdrhistogram::Histogram;
use libp2p::{Multiaddr, PeerId, StreamProtocol};
use serde::Serialize;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_util::compat::FuturesAsyncReadCompatExt as _;

use ww::net::client::Client;

/// What to run: `ww bench`'s arguments but `--json`.
#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// The node's address, ending in /p2p/<peer-id>.
    #[arg(value_name = "MULTIADDR")]
    pub addr: Multiaddr,
    /// The protocol to load, e.g. /ww/echo/0.1.0.
    #[arg(value_parser = ww::config::parse_protocol)]
    pub protocol: StreamProtocol,
    /// Streams in all (unless --duration is given).
    #[arg(long, default_value_t = 1000)]
    pub streams: u64,
    /// Streams in flight at once.
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// Bytes sent on each stream (a size: 1024, 64k, 64MiB, 1g).
    #[arg(long, default_value = "1024", value_parser = parse_bytes)]
    pub bytes: usize,
    /// Connections to spread the streams over (each from its own peer).
    #[arg(long, default_value_t = 1)]
    pub connections: usize,
    /// Run for this many seconds instead of a number of streams.
    #[arg(long, value_name = "S", value_parser = parse_seconds)]
    pub duration: Option<Duration>,
    /// Check that every answer equals what was sent.
    #[arg(long)]
    pub verify_echo: bool,
}

/// `ww bench`'s arguments.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// The load.
    #[command(flatten)]
    pub options: Options,
    /// Also write the report as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<std::path::PathBuf>,
}

impl BenchArgs {
    /// Runs `ww bench` with a progress bar on a terminal, and prints the report.
    pub async fn run(self) -> anyhow::Result<()> {
        use std::io::IsTerminal as _;
        let options = self.options;
        let bar = if std::io::stderr().is_terminal() {
            let bar = match options.duration {
                Some(_) => indicatif::ProgressBar::new_spinner(),
                None => indicatif::ProgressBar::new(options.streams),
            };
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{spinner} {pos}/{len} streams  {per_sec}  {elapsed}",
                )
                .expect("a valid template"),
            );
            // Drawn only after a second, so quick runs stay plain.
            bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
            Some(bar)
        } else {
            None
        };
        let started = Instant::now();
        let progress = |done: u64| {
            if let Some(bar) = &bar {
                if started.elapsed().as_secs() >= 1 && bar.is_hidden() {
                    bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
                }
                bar.set_position(done);
            }
        };
        let report = run(&options, &progress).await?;
        if let Some(bar) = bar {
            bar.finish_and_clear();
        }
        print!("{}", report.to_text());
        if let Some(path) = self.json {
            report.write_json(&path)?;
        }
        Ok(())
    }
}

/// A size for a flag: bytes, or with a unit (see [`ww::limits::parse_size`]).
fn parse_bytes(text: &str) -> anyhow::Result<usize> {
    let bytes = ww::limits::parse_size(text)?;
    usize::try_from(bytes).with_context(|| format!("{text} is too large for this machine"))
}

/// Seconds, possibly fractional, for `--duration`.
fn parse_seconds(text: &str) -> Result<Duration, std::num::ParseFloatError> {
    text.parse().map(Duration::from_secs_f64)
}

/// Latency percentiles, in microseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Percentiles {
    /// Median.
    pub p50_us: u64,
    /// 90th percentile.
    pub p90_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// Slowest.
    pub max_us: u64,
}

impl Percentiles {
    fn of(histogram: &Histogram<u64>) -> Self {
        Self {
            p50_us: histogram.value_at_quantile(0.50),
            p90_us: histogram.value_at_quantile(0.90),
            p99_us: histogram.value_at_quantile(0.99),
            max_us: histogram.max(),
        }
    }
}

/// What a run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The node.
    pub target: String,
    /// The protocol.
    pub protocol: String,
    /// Streams that completed (and matched, with `verify_echo`).
    pub streams_ok: u64,
    /// Streams that failed, by kind: `open`, `io`, `mismatch`.
    pub errors: BTreeMap<&'static str, u64>,
    /// Bytes sent on each stream.
    pub bytes_per_stream: usize,
    /// Streams in flight at once.
    pub concurrency: usize,
    /// Connections used.
    pub connections: usize,
    /// Wall-clock time of the run, in seconds.
    pub elapsed_s: f64,
    /// Completed streams per second.
    pub streams_per_s: f64,
    /// Bytes sent plus bytes received, per second.
    pub bytes_per_s: f64,
    /// Bytes sent in all.
    pub bytes_sent: u64,
    /// Bytes received in all.
    pub bytes_received: u64,
    /// From opening a stream to the first byte of its answer.
    pub first_byte: Percentiles,
    /// From opening a stream to the end of its answer.
    pub done: Percentiles,
}

/// Why one stream failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum ErrorKind {
    Open,
    Io,
    Mismatch,
}

impl ErrorKind {
    fn name(self) -> &'static str {
        match self {
            ErrorKind::Open => "open",
            ErrorKind::Io => "io",
            ErrorKind::Mismatch => "mismatch",
        }
    }
}

/// One worker's tally, merged at the end.
struct Tally {
    ok: u64,
    errors: BTreeMap<&'static str, u64>,
    sent: u64,
    received: u64,
    first_byte: Histogram<u64>,
    done: Histogram<u64>,
}

impl Tally {
    fn new() -> Self {
        let histogram = || Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds");
        Self {
            ok: 0,
            errors: BTreeMap::new(),
            sent: 0,
            received: 0,
            first_byte: histogram(),
            done: histogram(),
        }
    }

    fn merge(&mut self, other: Tally) {
        self.ok += other.ok;
        for (kind, count) in other.errors {
            *self.errors.entry(kind).or_default() += count;
        }
        self.sent += other.sent;
        self.received += other.received;
        self.first_byte.add(&other.first_byte).expect("same bounds");
        self.done.add(&other.done).expect("same bounds");
    }
}

/// Where streams are opened.
enum Target {
    /// Streams on a libp2p protocol, spread over these client peers' connections.
    Libp2p(Vec<(Client, PeerId)>),
    /// A fresh TCP connection per stream: the baseline with no libp2p at all.
    Tcp(std::net::SocketAddr),
}

/// Something a stream's bytes flow over.
trait Duplex: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin> Duplex for T {}

impl Target {
    async fn open(&self, i: u64, protocol: &StreamProtocol) -> Result<Box<dyn Duplex>, ErrorKind> {
        match self {
            Target::Libp2p(peers) => {
                let (client, peer) = &peers[i as usize % peers.len()];
                let stream = client
                    .open(*peer, protocol.clone())
                    .await
                    .map_err(|_| ErrorKind::Open)?;
                Ok(Box::new(stream.compat()))
            }
            Target::Tcp(addr) => {
                let socket = tokio::net::TcpStream::connect(addr)
                    .await
                    .map_err(|_| ErrorKind::Open)?;
                socket.set_nodelay(true).map_err(|_| ErrorKind::Open)?;
                Ok(Box::new(socket))
            }
        }
    }
}

/// Runs the benchmark. `progress` is called with the number of finished streams
/// (for a progress bar).
pub async fn run(options: &Options, progress: &(dyn Fn(u64) + Sync)) -> anyhow::Result<Report> {
    anyhow::ensure!(
        options.concurrency > 0 && options.connections > 0,
        "concurrency and connections must be at least 1"
    );
    let mut peers = Vec::new();
    for _ in 0..options.connections {
        let client = Client::new()?;
        let peer = client.connect(&options.addr).await?;
        peers.push((client, peer));
    }
    drive(options, &Target::Libp2p(peers), progress).await
}

/// Runs the same load against a raw TCP echo server at `addr`, one connection per
/// stream (`options.addr`, `protocol` and `connections` are only reported).
pub async fn run_tcp(options: &Options, addr: std::net::SocketAddr) -> anyhow::Result<Report> {
    drive(options, &Target::Tcp(addr), &|_| {}).await
}

async fn drive(
    options: &Options,
    target: &Target,
    progress: &(dyn Fn(u64) + Sync),
) -> anyhow::Result<Report> {
    let payload: Arc<[u8]> = (0..options.bytes).map(|i| (i % 251) as u8).collect();
    let next = AtomicU64::new(0);
    let finished = AtomicU64::new(0);
    let started = Instant::now();
    let deadline = options.duration.map(|duration| started + duration);
    let workers = (0..options.concurrency).map(|_| async {
        let mut tally = Tally::new();
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let more = match deadline {
                Some(deadline) => Instant::now() < deadline,
                None => i < options.streams,
            };
            if !more {
                return tally;
            }
            one_stream(target, i, options, &payload, &mut tally).await;
            progress(finished.fetch_add(1, Ordering::Relaxed) + 1);
        }
    });
    let mut total = Tally::new();
    for tally in futures::future::join_all(workers).await {
        total.merge(tally);
    }
    let elapsed = started.elapsed().as_secs_f64();
    Ok(Report {
        target: options.addr.to_string(),
        protocol: options.protocol.to_string(),
        streams_ok: total.ok,
        errors: total.errors,
        bytes_per_stream: options.bytes,
        concurrency: options.concurrency,
        connections: options.connections,
        elapsed_s: elapsed,
        streams_per_s: total.ok as f64 / elapsed,
        bytes_per_s: (total.sent + total.received) as f64 / elapsed,
        bytes_sent: total.sent,
        bytes_received: total.received,
        first_byte: Percentiles::of(&total.first_byte),
        done: Percentiles::of(&total.done),
    })
}

/// Opens one stream, sends the payload, half-closes, reads the answer to EOF.
async fn one_stream(target: &Target, i: u64, options: &Options, payload: &[u8], tally: &mut Tally) {
    let started = Instant::now();
    let result = async {
        let stream = target.open(i, &options.protocol).await?;
        let (mut reader, mut writer) = tokio::io::split(stream);
        let send = async {
            writer.write_all(payload).await?;
            writer.shutdown().await
        };
        let receive = async {
            let mut buf = vec![0u8; 64 * 1024];
            let mut received = 0usize;
            let mut first_byte = None;
            let mut matches = true;
            loop {
                let n = reader.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                first_byte.get_or_insert_with(|| started.elapsed());
                if options.verify_echo {
                    let expected = payload.get(received..received + n);
                    matches &= expected == Some(&buf[..n]);
                }
                received += n;
            }
            matches &= !options.verify_echo || received == payload.len();
            Ok::<_, std::io::Error>((received, first_byte, matches))
        };
        let (sent, received) = tokio::join!(send, receive);
        let (received, first_byte, matches) = received.map_err(|_| ErrorKind::Io)?;
        sent.map_err(|_| ErrorKind::Io)?;
        tally.sent += payload.len() as u64;
        tally.received += received as u64;
        if !matches {
            return Err(ErrorKind::Mismatch);
        }
        Ok(first_byte.unwrap_or_else(|| started.elapsed()))
    }
    .await;
    match result {
        Ok(first_byte) => {
            tally.ok += 1;
            let micros = |d: Duration| (d.as_micros() as u64).max(1);
            tally.first_byte.saturating_record(micros(first_byte));
            tally.done.saturating_record(micros(started.elapsed()));
        }
        Err(kind) => *tally.errors.entry(kind.name()).or_default() += 1,
    }
}

impl Report {
    /// The report as a few lines of text.
    pub fn to_text(&self) -> String {
        let errors = if self.errors.is_empty() {
            "none".to_string()
        } else {
            self.errors
                .iter()
                .map(|(kind, n)| format!("{kind} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let p = |p: &Percentiles| {
            format!(
                "p50 {} µs  p90 {} µs  p99 {} µs  max {} µs",
                p.p50_us, p.p90_us, p.p99_us, p.max_us
            )
        };
        format!(
            "{} {}\n  streams     {} ok in {:.2} s: {:.0} streams/s ({} in flight over {} connection(s), {} B each)\n  throughput  {:.1} MB/s (sent {} B, received {} B)\n  first byte  {}\n  done        {}\n  errors      {}\n",
            self.target,
            self.protocol,
            self.streams_ok,
            self.elapsed_s,
            self.streams_per_s,
            self.concurrency,
            self.connections,
            self.bytes_per_stream,
            self.bytes_per_s / 1e6,
            self.bytes_sent,
            self.bytes_received,
            p(&self.first_byte),
            p(&self.done),
            errors,
        )
    }

    /// Writes the report as JSON to `path`.
    pub fn write_json(&self, path: &std::path::Path) -> anyhow::Result<()> {
        let json = serde_json::to_string_pretty(self)?;
        std::fs::write(path, json + "\n")
            .with_context(|| format!("cannot write {}", path.display()))
    }
}
