//! Workload (f): what a live, idle instance costs a node in resident memory.
//!
//! A fresh `ww run` node serves the `echo` cell (or, for workload (g), another
//! [`MemoryTarget`]); clients, each a peer of its own (so neither the per-peer
//! connection limit nor yamux's per-connection stream cap is in the way), open `count`
//! streams and send nothing, so every instance sits in its first read. The node's RSS
//! before and after, over `count`, is the cost of one live cell: its instance, its
//! store, its stream and that stream's share of a connection.
//!
//! RSS counts a page once for every place it is mapped, so it counts the pages of a
//! cell's memory image (shared copy-on-write by all its instances, one physical copy)
//! again for every instance that reads them. The private (anonymous) part of RSS,
//! `RssAnon`, counts what each instance really adds: the pages it wrote (copies of
//! image pages, heap, stack) and the node's own allocations for it. Both are
//! reported.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures::{AsyncReadExt as _, AsyncWriteExt as _, StreamExt as _, TryStreamExt as _};
use libp2p::{PeerId, Stream, StreamProtocol};
use serde::Serialize;

use super::{WW_ECHO, start};
use ww::net::STATS_PROTOCOL;
use ww::net::client::Client;

/// Streams one client connection carries (yamux allows 512 per connection).
const STREAMS_PER_CONNECTION: usize = 500;
/// Streams a client opens at once.
const OPENING: usize = 32;
/// How long the node may take to report every instance live.
const RAMP_LIMIT: Duration = Duration::from_secs(300);

/// The node's memory while it held `live` idle instances.
#[derive(Debug, Serialize)]
pub struct MemoryRow {
    /// Live idle instances the node held.
    pub live: u64,
    /// Connections, each from a peer of its own, the streams were spread over.
    pub connections: usize,
    /// Node RSS after serving one stream and before the others opened, in KiB.
    pub rss_idle_kib: u64,
    /// Node RSS while holding `live` instances, in KiB.
    pub rss_live_kib: u64,
    /// (`rss_live_kib` − `rss_idle_kib`) / `live`.
    pub kib_per_cell: f64,
    /// The private part of RSS (`RssAnon`) before the streams opened, in KiB.
    pub private_idle_kib: u64,
    /// The private part of RSS while holding `live` instances, in KiB.
    pub private_live_kib: u64,
    /// (`private_live_kib` − `private_idle_kib`) / `live`: the memory one more live
    /// instance takes, not counting the image pages all instances share.
    pub private_kib_per_cell: f64,
    /// Seconds from the first stream opening to the node counting all `live`.
    pub ramp_s: f64,
}

/// The cell whose live instances are counted.
pub struct MemoryTarget<'a> {
    /// The protocol the idle streams are opened on.
    pub protocol: StreamProtocol,
    /// `PROTOCOL=FILE` for `--cell`, for a cell that is not built in; `None` serves the
    /// built-in cells (echo among them).
    pub cell: Option<String>,
    /// What the cell answers to the one-byte request `x`.
    pub answer_to_x: &'a [u8],
    /// A compiled-component cache to share with other nodes of the run, so a large
    /// component is compiled once; `None` gives the node a fresh one.
    pub cache: Option<&'a Path>,
}

impl MemoryTarget<'_> {
    /// The built-in echo cell.
    pub fn echo() -> Self {
        Self {
            protocol: WW_ECHO,
            cell: None,
            answer_to_x: b"x",
            cache: None,
        }
    }
}

/// Starts a node with room for `count` instances, fills it with idle echo instances
/// and measures its RSS.
pub async fn measure(exe: &Path, count: u64) -> anyhow::Result<MemoryRow> {
    measure_cell(exe, count, &MemoryTarget::echo()).await
}

/// Starts a node serving `target` with room for `count` instances, fills it with idle
/// instances of it and measures its RSS.
pub async fn measure_cell(
    exe: &Path,
    count: u64,
    target: &MemoryTarget<'_>,
) -> anyhow::Result<MemoryRow> {
    let work = tempfile::tempdir()?;
    let identity = work.path().join("id.key").display().to_string();
    let cache = match target.cache {
        Some(shared) => shared.display().to_string(),
        None => work.path().join("cache").display().to_string(),
    };
    let room = count.to_string();
    let mut args = vec![
        "run",
        "--listen",
        "/ip4/127.0.0.1/tcp/0",
        "--identity",
        &identity,
        "--cache-dir",
        &cache,
        "--max-instances",
        &room,
        "--max-per-peer",
        &room,
        "--idle-s",
        "0",
        "--queue-ms",
        "60000",
        "--no-mdns",
    ];
    if let Some(cell) = &target.cell {
        args.extend(["--cell", cell.as_str()]);
    }
    let (node, addrs) = start(exe, &args, 1).await?;
    let pid = node.id().context("the node exited at start")?;
    let addr = &addrs[0];

    let probe = Client::new()?;
    let peer = probe.connect(addr).await?;
    answer_one_byte(&probe, peer, &target.protocol, target.answer_to_x).await?;
    let idle = Rss::read(pid)?;

    let started = Instant::now();
    let count_usize = usize::try_from(count)?;
    let connections = count_usize.div_ceil(STREAMS_PER_CONNECTION);
    let mut clients = Vec::with_capacity(connections);
    let mut held: Vec<Stream> = Vec::with_capacity(count_usize);
    for connection in 0..connections {
        let share = STREAMS_PER_CONNECTION.min(count_usize - connection * STREAMS_PER_CONNECTION);
        let client = Client::new()?;
        client.connect(addr).await?;
        let streams: Vec<Stream> = futures::stream::iter(0..share)
            .map(|_| client.open(peer, target.protocol.clone()))
            .buffer_unordered(OPENING)
            .try_collect()
            .await
            .with_context(|| format!("opening an idle {} stream", target.protocol))?;
        held.extend(streams);
        clients.push(client);
    }
    wait_until_live(&probe, peer, count).await?;
    let ramp_s = started.elapsed().as_secs_f64();
    let live = settled_rss(pid).await?;
    drop(held);
    let per_cell = |idle: u64, live: u64| live.saturating_sub(idle) as f64 / count as f64;
    Ok(MemoryRow {
        live: count,
        connections,
        rss_idle_kib: idle.total_kib,
        rss_live_kib: live.total_kib,
        kib_per_cell: per_cell(idle.total_kib, live.total_kib),
        private_idle_kib: idle.private_kib,
        private_live_kib: live.private_kib,
        private_kib_per_cell: per_cell(idle.private_kib, live.private_kib),
        ramp_s,
    })
}

/// One full stream, so the code and the first instance's pages are resident before
/// the baseline is read, as on any node that has served.
pub(super) async fn answer_one_byte(
    client: &Client,
    peer: PeerId,
    protocol: &StreamProtocol,
    answer_to_x: &[u8],
) -> anyhow::Result<()> {
    let mut stream = client.open(peer, protocol.clone()).await?;
    stream.write_all(b"x").await?;
    stream.close().await?;
    let mut reply = Vec::new();
    stream.read_to_end(&mut reply).await?;
    if reply != answer_to_x {
        bail!(
            "{protocol} answered {:?} to \"x\"",
            String::from_utf8_lossy(&reply)
        );
    }
    Ok(())
}

/// Polls the node's counters until `count` instances are live.
async fn wait_until_live(client: &Client, peer: PeerId, count: u64) -> anyhow::Result<()> {
    let deadline = Instant::now() + RAMP_LIMIT;
    loop {
        let live = live_instances(client, peer).await?;
        if live >= count {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("only {live} of {count} instances live after {RAMP_LIMIT:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The node's `live` counter, read over its stats protocol.
async fn live_instances(client: &Client, peer: PeerId) -> anyhow::Result<u64> {
    let mut stream = client.open(peer, STATS_PROTOCOL).await?;
    let mut text = String::new();
    stream.read_to_string(&mut text).await?;
    text.lines()
        .find_map(|line| line.strip_prefix("live "))
        .context("no `live` line in the node's stats")?
        .parse()
        .context("a malformed `live` count")
}

/// RSS once instances counted live have also reached their first read: read until
/// two readings half a second apart differ by under 1%.
async fn settled_rss(pid: u32) -> anyhow::Result<Rss> {
    let mut last = Rss::read(pid)?;
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = Rss::read(pid)?;
        if now.total_kib.abs_diff(last.total_kib) * 100 < last.total_kib {
            return Ok(now);
        }
        last = now;
    }
    Ok(last)
}

/// A process's resident set, from /proc.
#[derive(Debug, Clone, Copy)]
struct Rss {
    /// `VmRSS`: every mapped page, counted once per mapping, in KiB.
    total_kib: u64,
    /// `RssAnon`: the private pages, in KiB.
    private_kib: u64,
}

impl Rss {
    fn read(pid: u32) -> anyhow::Result<Self> {
        let path = format!("/proc/{pid}/status");
        let status =
            std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
        let field = |name: &str| {
            status
                .lines()
                .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
                .and_then(|value| value.trim().strip_suffix("kB"))
                .and_then(|kib| kib.trim().parse().ok())
                .with_context(|| format!("no {name} in {path}"))
        };
        Ok(Self {
            total_kib: field("VmRSS")?,
            private_kib: field("RssAnon")?,
        })
    }
}
