//! Workload (g): guests that carry a language runtime — a Python cell (componentize-py)
//! and a JavaScript cell (componentize-js, SpiderMonkey inside) — against the Rust echo
//! cell, in the same run, so ratios can be quoted.
//!
//! The suite builds the two cells with their own build scripts from ww's source tree
//! (`protocols/wc/build.sh` installs componentize-py from PyPI, `protocols/echo-js/
//! build.sh` componentize-js from npm), by default into `bench-cells/` beside the `ww`
//! binary.
//! A guest that cannot be built (no python3 or npm, no source tree, a failed build) is
//! skipped with a note; the rest of the suite does not depend on it.
//!
//! For each guest: the per-stream cost at one fixed load — a 1-byte request on a fresh
//! stream each time, [`CONCURRENCY`] in flight over one TCP connection — with the
//! guests' runs interleaved round by round on one node serving all of them; the node's
//! mean instantiation time (`ww_instantiate_seconds`, from its `/metrics`); and the
//! resident memory per live instance ([`super::memory`]).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, bail};
use libp2p::StreamProtocol;
use serde::Serialize;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use ww::net::client::Client;

use super::memory::{self, MemoryRow, MemoryTarget};
use super::{WW_ECHO, start};
use crate::tools::bench::{self, Options, Report};

/// Streams in flight at once in the per-stream load.
pub const CONCURRENCY: usize = 8;

/// A cell measured in workload (g).
struct Guest {
    /// The cell's name (its file's stem, so also its `cell` label in the metrics).
    name: &'static str,
    /// The language it is written in.
    language: &'static str,
    protocol: StreamProtocol,
    /// How to build it; `None` for a cell built into ww.
    build: Option<Build>,
    /// What it answers to the one-byte request `x`.
    answer_to_x: &'static [u8],
}

/// How a guest is built from ww's source tree.
struct Build {
    /// The build script, relative to the source tree; it takes the output path.
    script: &'static str,
    /// The tool the script needs on PATH.
    tool: &'static str,
    /// What the script installs with it.
    installs: &'static str,
}

fn guests() -> [Guest; 3] {
    [
        Guest {
            name: "echo",
            language: "Rust",
            protocol: WW_ECHO,
            build: None,
            answer_to_x: b"x",
        },
        Guest {
            name: "wc",
            language: "Python",
            protocol: StreamProtocol::new("/ww/wc/0.1.0"),
            build: Some(Build {
                script: "protocols/wc/build.sh",
                tool: "python3",
                installs: "componentize-py from PyPI",
            }),
            answer_to_x: b"{\"lines\": 0, \"words\": 1, \"bytes\": 1}\n",
        },
        Guest {
            name: "echo-js",
            language: "JavaScript",
            protocol: StreamProtocol::new("/ww/echo-js/0.1.0"),
            build: Some(Build {
                script: "protocols/echo-js/build.sh",
                tool: "npm",
                installs: "componentize-js from npm",
            }),
            answer_to_x: b"x",
        },
    ]
}

/// Workload (g)'s results.
#[derive(Debug, Serialize)]
pub struct GuestsReport {
    /// Streams per run of the per-stream load (each a 1-byte request).
    pub streams: u64,
    /// Streams in flight at once.
    pub concurrency: usize,
    /// Live idle instances in each guest's memory measurement.
    pub live: u64,
    /// One row per guest measured, echo first.
    pub rows: Vec<GuestRow>,
    /// Guests not measured, and why.
    pub skipped: Vec<SkippedGuest>,
}

/// One guest's figures.
#[derive(Debug, Serialize)]
pub struct GuestRow {
    /// The cell's name.
    pub guest: &'static str,
    /// The language it is written in.
    pub language: &'static str,
    /// The component's size in bytes; `None` for a cell built into ww.
    pub component_bytes: Option<u64>,
    /// The per-stream load's run with the median streams/s.
    pub report: Report,
    /// Streams/s of every run, in the order they ran.
    pub runs: Vec<f64>,
    /// The node's mean instantiation time for this cell over every stream it served
    /// (`ww_instantiate_seconds_sum / _count`), in µs.
    pub instantiate_mean_us: Option<f64>,
    /// Resident memory per live idle instance.
    pub memory: MemoryRow,
    /// This guest's streams/s over echo's.
    pub streams_per_s_over_echo: f64,
    /// This guest's median stream time over echo's.
    pub p50_done_over_echo: f64,
    /// This guest's KiB per live instance over echo's.
    pub kib_per_instance_over_echo: f64,
}

/// A guest the run did not measure.
#[derive(Debug, Serialize)]
pub struct SkippedGuest {
    /// The cell's name.
    pub guest: &'static str,
    /// The language it is written in.
    pub language: &'static str,
    /// Why it was skipped.
    pub reason: String,
}

/// Builds the guests in `out_dir`, then measures every one that built (echo always
/// does), each measurement `repeat` times. `quick` shrinks the load (for tests).
pub async fn measure(
    exe: &Path,
    out_dir: &Path,
    quick: bool,
    repeat: usize,
) -> anyhow::Result<GuestsReport> {
    let streams: u64 = if quick { 40 } else { 1000 };
    let live: u64 = if quick { 10 } else { 100 };
    let mut ready = Vec::new();
    let mut skipped = Vec::new();
    for guest in guests() {
        match &guest.build {
            None => ready.push((guest, None)),
            Some(build) => {
                match build_guest(build, &out_dir.join(format!("{}.wasm", guest.name))).await {
                    Ok(wasm) => ready.push((guest, Some(wasm))),
                    Err(reason) => {
                        eprintln!(
                            "bench-suite: skipping the {} cell: {reason}",
                            guest.language
                        );
                        skipped.push(SkippedGuest {
                            guest: guest.name,
                            language: guest.language,
                            reason,
                        });
                    }
                }
            }
        }
    }

    let work = tempfile::tempdir()?;
    let cache = work.path().join("cache");
    let per_stream = per_stream(exe, &ready, &cache, streams, repeat).await?;

    let mut rows: Vec<GuestRow> = Vec::new();
    for ((guest, wasm), (report, runs, instantiate_mean_us)) in ready.iter().zip(per_stream) {
        let target = MemoryTarget {
            protocol: guest.protocol.clone(),
            cell: wasm.as_ref().map(|wasm| cell_flag(guest, wasm)),
            answer_to_x: guest.answer_to_x,
            cache: Some(&cache),
        };
        let memory = memory::measure_cell(exe, live, &target)
            .await
            .with_context(|| format!("measuring the {} cell's memory", guest.language))?;
        let component_bytes = match wasm {
            Some(wasm) => Some(std::fs::metadata(wasm)?.len()),
            None => None,
        };
        let (streams_over, p50_over, kib_over) = match rows.first() {
            Some(echo) => (
                report.streams_per_s / echo.report.streams_per_s,
                report.done.p50_us as f64 / echo.report.done.p50_us as f64,
                memory.kib_per_cell / echo.memory.kib_per_cell,
            ),
            None => (1.0, 1.0, 1.0),
        };
        rows.push(GuestRow {
            guest: guest.name,
            language: guest.language,
            component_bytes,
            report,
            runs,
            instantiate_mean_us,
            memory,
            streams_per_s_over_echo: streams_over,
            p50_done_over_echo: p50_over,
            kib_per_instance_over_echo: kib_over,
        });
    }
    Ok(GuestsReport {
        streams,
        concurrency: CONCURRENCY,
        live,
        rows,
        skipped,
    })
}

/// Workload (g) when it does not run at all.
pub fn not_run(reason: &str) -> GuestsReport {
    GuestsReport {
        streams: 0,
        concurrency: CONCURRENCY,
        live: 0,
        rows: Vec::new(),
        skipped: guests()
            .into_iter()
            .filter(|guest| guest.build.is_some())
            .map(|guest| SkippedGuest {
                guest: guest.name,
                language: guest.language,
                reason: reason.to_string(),
            })
            .collect(),
    }
}

/// `--cell PROTOCOL=FILE` for a built guest.
fn cell_flag(guest: &Guest, wasm: &Path) -> String {
    format!("{}={}", guest.protocol, wasm.display())
}

/// Runs `build`'s script to write `out`; the error is the reason to skip the guest.
async fn build_guest(build: &Build, out: &Path) -> Result<PathBuf, String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join(build.script);
    if !script.exists() {
        return Err(format!(
            "{} is not here (this ww was not built from a source tree that is still there)",
            script.display()
        ));
    }
    let tool = tokio::process::Command::new(build.tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await;
    if !tool.is_ok_and(|status| status.success()) {
        return Err(format!(
            "{} is not installed (the build installs {} with it)",
            build.tool, build.installs
        ));
    }
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    eprintln!("bench-suite: building {} ({})", out.display(), build.script);
    let output = tokio::process::Command::new("bash")
        .arg(&script)
        .arg(out)
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| format!("cannot run {}: {e}", build.script))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let last = stderr
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("");
        return Err(format!(
            "{} failed ({}): {last}",
            build.script, output.status
        ));
    }
    Ok(out.to_path_buf())
}

/// The per-stream load on every ready guest, round by round on one node serving all of
/// them; per guest, its median run, every run's streams/s and its mean instantiation
/// time.
async fn per_stream(
    exe: &Path,
    ready: &[(Guest, Option<PathBuf>)],
    cache: &Path,
    streams: u64,
    repeat: usize,
) -> anyhow::Result<Vec<(Report, Vec<f64>, Option<f64>)>> {
    let work = tempfile::tempdir()?;
    let identity = work.path().join("id.key").display().to_string();
    let cache = cache.display().to_string();
    let admin = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let admin_flag = admin.to_string();
    let cells: Vec<String> = ready
        .iter()
        .map(|(guest, wasm)| match wasm {
            Some(wasm) => cell_flag(guest, wasm),
            None => format!("{}=builtin:{}", guest.protocol, guest.name),
        })
        .collect();
    let mut args = vec![
        "run",
        "--listen",
        "/ip4/127.0.0.1/tcp/0",
        "--identity",
        &identity,
        "--cache-dir",
        &cache,
        "--admin",
        &admin_flag,
        "--max-per-peer",
        "1000",
        "--queue-ms",
        "60000",
        "--no-mdns",
    ];
    for cell in &cells {
        args.extend(["--cell", cell.as_str()]);
    }
    let (_node, addrs) = start(exe, &args, 1).await?;
    let addr = addrs[0].clone();

    let probe = Client::new()?;
    let peer = probe.connect(&addr).await?;
    for (guest, _) in ready {
        super::memory::answer_one_byte(&probe, peer, &guest.protocol, guest.answer_to_x)
            .await
            .with_context(|| format!("the {} cell", guest.language))?;
    }

    let options = |guest: &Guest| Options {
        addr: addr.clone(),
        protocol: guest.protocol.clone(),
        streams,
        concurrency: CONCURRENCY,
        bytes: 1,
        connections: 1,
        duration: None,
        verify_echo: guest.answer_to_x == b"x",
    };
    // Round by round, so a noisy minute on this shared machine hits every guest.
    let mut reports: Vec<Vec<Report>> = ready.iter().map(|_| Vec::new()).collect();
    for _ in 0..repeat.max(1) {
        for ((guest, _), runs) in ready.iter().zip(&mut reports) {
            let report = bench::run(&options(guest), &|_| {}).await?;
            let errors: u64 = report.errors.values().sum();
            if errors > 0 {
                bail!(
                    "the {} cell failed streams: {:?}",
                    guest.language,
                    report.errors
                );
            }
            runs.push(report);
        }
    }
    let metrics = http_get(admin, "/metrics").await?;
    Ok(ready
        .iter()
        .zip(reports)
        .map(|((guest, _), runs)| {
            let (report, figures) = median_run(runs);
            (report, figures, instantiate_mean_us(&metrics, guest.name))
        })
        .collect())
}

/// The run with the median streams/s, and every run's streams/s in order.
fn median_run(mut runs: Vec<Report>) -> (Report, Vec<f64>) {
    let figures = runs.iter().map(|r| r.streams_per_s).collect();
    runs.sort_by(|a, b| a.streams_per_s.total_cmp(&b.streams_per_s));
    (runs.swap_remove(runs.len() / 2), figures)
}

/// The mean of `cell`'s `ww_instantiate_seconds` histogram in a Prometheus text
/// exposition, in µs; `None` if the node has not exported it.
fn instantiate_mean_us(metrics: &str, cell: &str) -> Option<f64> {
    let value = |name: &str| -> Option<f64> {
        let prefix = format!("{name}{{cell=\"{cell}\"}} ");
        metrics
            .lines()
            .find_map(|line| line.strip_prefix(&prefix))
            .and_then(|value| value.trim().parse().ok())
    };
    let count = value("ww_instantiate_seconds_count")?;
    let sum = value("ww_instantiate_seconds_sum")?;
    (count > 0.0).then(|| sum / count * 1e6)
}

/// `GET path` from the node's admin endpoint; the body.
async fn http_get(addr: std::net::SocketAddr, path: &str) -> anyhow::Result<String> {
    let mut socket = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::net::TcpStream::connect(addr),
    )
    .await
    .context("the admin endpoint did not answer in 10 s")?
    .with_context(|| format!("cannot reach the admin endpoint at {addr}"))?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    socket.write_all(request.as_bytes()).await?;
    let mut response = String::new();
    socket.read_to_string(&mut response).await?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .context("not an HTTP response")?;
    if !head.starts_with("HTTP/1.1 200") {
        bail!("GET {path}: {}", head.lines().next().unwrap_or(head));
    }
    Ok(body.to_string())
}

impl GuestsReport {
    /// Workload (g) as a Markdown table, and a line per skipped guest.
    pub fn to_table(&self) -> String {
        let mut out = String::new();
        if !self.rows.is_empty() {
            out += &format!(
                "\n| g: guest (1-byte request, fresh stream each, {} in flight, TCP) | language | component (MB) | streams/s | p50 done (µs) | p99 done (µs) | instantiate mean (µs) | KiB per live instance, RSS ({} live) | private KiB per live instance | streams/s ÷ echo | p50 ÷ echo | KiB ÷ echo |\n",
                self.concurrency, self.live
            );
            out += "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n";
        }
        for row in &self.rows {
            let r = &row.report;
            let size = row
                .component_bytes
                .map_or("built in".to_string(), |b| format!("{:.1}", b as f64 / 1e6));
            let instantiate = row
                .instantiate_mean_us
                .map_or("–".to_string(), |us| format!("{us:.0}"));
            out += &format!(
                "| {} | {} | {} | {:.0} | {} | {} | {} | {:.0} | {:.0} | {:.3} | {:.1} | {:.1} |\n",
                row.guest,
                row.language,
                size,
                r.streams_per_s,
                r.done.p50_us,
                r.done.p99_us,
                instantiate,
                row.memory.kib_per_cell,
                row.memory.private_kib_per_cell,
                row.streams_per_s_over_echo,
                row.p50_done_over_echo,
                row.kib_per_instance_over_echo,
            );
        }
        if !self.skipped.is_empty() {
            out += "\n";
        }
        for skipped in &self.skipped {
            out += &format!(
                "g: the {} cell ({}) was skipped: {}\n",
                skipped.language, skipped.guest, skipped.reason
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::instantiate_mean_us;

    #[test]
    fn the_instantiation_mean_is_read_per_cell() {
        let metrics = "ww_instantiate_seconds_sum{cell=\"echo\"} 0.004\n\
                       ww_instantiate_seconds_count{cell=\"echo\"} 100\n\
                       ww_instantiate_seconds_sum{cell=\"echo-js\"} 0.5\n\
                       ww_instantiate_seconds_count{cell=\"echo-js\"} 250\n";
        let us = |cell| instantiate_mean_us(metrics, cell).map(|us| us.round());
        assert_eq!(us("echo"), Some(40.0));
        assert_eq!(us("echo-js"), Some(2000.0));
        assert_eq!(us("wc"), None);
    }
}
