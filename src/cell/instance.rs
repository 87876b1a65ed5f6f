//! A loaded [`Cell`] serving one stream: a fresh `Store` and instance, `wasi:cli/run`,
//! the watchdog for its limits, the flush of what it left, the end of the stream as
//! its outcome says, and the metrics entry; [`Failure`] says how it ended.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::io::AsyncRead;
use tokio_util::sync::CancellationToken;
use wasmtime::{Store, UpdateDeadline};
use wasmtime_wasi::WasiCtxBuilder;
use wasmtime_wasi::cli::{AsyncStdinStream, AsyncStdoutStream, StdoutStream as _};

use super::dialer::{Chain, InstanceDialer};
use super::io::{
    self, GuestLog, MeteredReader, PeerInputStream, PeerOutputStream, PeerWriter, SyncReader,
};
use super::meter::Traffic;
use super::runtime::Runtime;
use super::world::Mode;
use super::{CellPre, Connection, DialGrant, Host, LimitExceeded};
use crate::limits::Limits;
use crate::metrics::{CellLabel, Metrics};
use crate::net::network::Network;
use crate::net::status::{CallHeader, Outcome};

/// How long a failed instance's output may take to drain before its stream is ended.
const FAILURE_FLUSH: Duration = Duration::from_secs(1);

/// A compiled, linked cell, ready to be instantiated once per stream.
#[derive(Clone)]
pub struct Cell {
    pub(super) runtime: Arc<Runtime>,
    pub(super) pre: CellPre<Host>,
    pub(super) limits: Limits,
    pub(super) mode: Mode,
    /// What its instances may dial.
    pub(super) grant: Arc<DialGrant>,
    /// The network they dial through, if any.
    pub(super) network: Option<Network>,
    /// Whether its compiled code came from the cache.
    pub(super) cached: bool,
    pub(super) label: CellLabel,
}

/// How one instance ended.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// The instance could not be created (pool exhausted, out of memory…).
    #[error("instantiation failed: {0:#}")]
    Instantiate(anyhow::Error),
    /// `run` returned `err`; with the last line the guest wrote to stderr, if any.
    #[error("run returned an error{}", explained(.0))]
    RunError(Option<String>),
    /// The guest exited with a non-zero status; with its last line on stderr, if any.
    #[error("exited with status {status}{}", explained(said))]
    Exit {
        /// The exit status.
        status: i32,
        /// The last line the guest wrote to stderr.
        said: Option<String>,
    },
    /// The instance ran into one of its limits.
    #[error("{0}")]
    Limit(LimitExceeded),
    /// The guest trapped (including a host error it triggered).
    #[error("trapped: {0:#}")]
    Trap(anyhow::Error),
    /// The node stopped serving before the instance finished.
    #[error("node shutting down")]
    Stopped,
}

impl Failure {
    /// A short label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Failure::Instantiate(_) => "instantiate",
            Failure::RunError(_) => "error",
            Failure::Exit { .. } => "exit",
            Failure::Limit(LimitExceeded::Cpu(_)) => "cpu",
            Failure::Limit(LimitExceeded::Memory(_)) => "memory",
            Failure::Limit(LimitExceeded::Idle(_)) => "idle",
            Failure::Limit(LimitExceeded::Wall(_) | LimitExceeded::CallerDeadline(_)) => "wall",
            Failure::Trap(_) => "trap",
            Failure::Stopped => "shutdown",
        }
    }

    /// One line for the peer (the outcome trailer): what went wrong, without the
    /// backtrace that the node's log gets.
    pub fn reason(&self) -> String {
        match self {
            Failure::Trap(error) => format!("trapped: {}", error.root_cause()),
            other => other.to_string(),
        }
    }
}

/// `: <line>` for a failure the guest explained on stderr, nothing otherwise.
fn explained(line: &Option<String>) -> String {
    line.as_ref()
        .map(|line| format!(": {line}"))
        .unwrap_or_default()
}

impl Cell {
    /// Runs one fresh instance on a connection made of `reader` and `writer` (the two
    /// halves of a peer stream, or of this process's stdio for `ww cell`).
    ///
    /// When the instance is over, its remaining output is flushed and the stream is
    /// ended according to the outcome (see [`PeerWriter::end`]): a graceful close on
    /// success, an abort or a failure trailer otherwise. Cancelling `stop` ends the
    /// instance as [`Failure::Stopped`].
    pub async fn serve<R>(
        &self,
        args: &[&str],
        reader: R,
        writer: PeerWriter,
        stop: &CancellationToken,
    ) -> Result<(), Failure>
    where
        R: AsyncRead + Send + Unpin + 'static,
    {
        self.serve_call(args, reader, writer, None, stop).await
    }

    /// [`Self::serve`] for a stream that a cell dialed (`P+call`): `call` is what its
    /// header says is left of the caller's chain (hops and deadline).
    pub async fn serve_call<R>(
        &self,
        args: &[&str],
        reader: R,
        writer: PeerWriter,
        call: Option<CallHeader>,
        stop: &CancellationToken,
    ) -> Result<(), Failure>
    where
        R: AsyncRead + Send + Unpin + 'static,
    {
        let chain = Chain::start(&self.limits, call);
        let traffic = writer.traffic();
        let reader = MeteredReader::new(reader, traffic.clone());
        let io = match self.mode {
            Mode::Connection => Io::Connection(Connection::new(
                Box::new(PeerInputStream::new(reader).driving(writer.clone())),
                Box::new(PeerOutputStream::new(writer.clone())),
            )),
            Mode::Stdio => Io::Stdio {
                stdin: AsyncStdinStream::new(SyncReader::new(reader)),
                stdout: AsyncStdoutStream::new(io::OUTPUT_BUDGET, writer.clone()),
            },
        };
        // Counted as ended even if this task is cancelled (shutdown): then as "aborted".
        let mut record = Record::start(&self.runtime.metrics, &self.label, traffic.clone());
        // The watchdog ends the instance by dropping it mid-call, which wasmtime allows.
        let outcome = tokio::select! {
            outcome = self.run(args, io, &writer, &traffic, chain) => outcome,
            exceeded = watchdog(&self.limits, chain, &traffic) => Err(Failure::Limit(exceeded)),
            () = stop.cancelled() => Err(Failure::Stopped),
        };
        let ending = match &outcome {
            Ok(()) => Outcome::Success,
            Err(failure) => Outcome::Failure(failure.reason()),
        };
        if let Err(error) = writer.end(&ending).await {
            tracing::debug!(%error, "the stream could not be ended as intended; aborting it");
        }
        if let (Err(failure), Outcome::Failure(reason)) = (&outcome, ending) {
            // A node's streams get (protocol, peer) as their arguments.
            let peer = args
                .get(1)
                .filter(|arg| arg.parse::<libp2p::PeerId>().is_ok());
            let peer = peer.map(|peer| peer.to_string());
            let metrics = &self.runtime.metrics;
            metrics.note_failure(&self.label, failure.kind(), reason, peer);
        }
        record.failure = outcome.as_ref().err().map(Failure::kind);
        outcome
    }

    /// Instantiates the cell, runs it, and flushes the output it left behind. The
    /// instance is dropped on return.
    async fn run(
        &self,
        args: &[&str],
        io: Io,
        writer: &PeerWriter,
        traffic: &Arc<Traffic>,
        chain: Chain,
    ) -> Result<(), Failure> {
        let stderr = GuestLog::new("stderr");
        let mut wasi = WasiCtxBuilder::new();
        wasi.args(args)
            .stderr(stderr.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false);
        let (connection, mut stdout) = match io {
            Io::Connection(connection) => {
                wasi.stdout(GuestLog::new("stdout"));
                (Some(connection), None)
            }
            Io::Stdio { stdin, stdout } => {
                // Kept to flush what the guest printed once it is done.
                let handle = stdout.p2_stream();
                wasi.stdin(stdin).stdout(stdout);
                (None, Some(handle))
            }
        };
        let dialer = self.grant.is_granted().then(|| {
            let (grant, max_dials) = (self.grant.clone(), self.limits.max_dials);
            let network = self.network.clone();
            InstanceDialer::new(network, grant, max_dials, chain, traffic.clone())
        });
        let host = Host::new(wasi.build(), connection, &self.limits, dialer);
        let mut store = Store::new(&self.runtime.engine, host);
        store.limiter(|host| &mut host.memory);
        store.call_hook(|mut cx, hook| {
            cx.data_mut().cpu.on_hook(hook);
            Ok(())
        });
        // Every tick: stop a guest over its CPU budget, otherwise let other tasks run.
        let cpu_ms = self.limits.cpu_ms;
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |cx| {
            if cx.data().cpu.exhausted() {
                return Err(wasmtime::Error::new(LimitExceeded::Cpu(cpu_ms)));
            }
            Ok(UpdateDeadline::Yield(1))
        });

        let started = Instant::now();
        let cell = self
            .pre
            .instantiate_async(&mut store)
            .await
            .map_err(|e| Failure::Instantiate(e.into()))?;
        self.runtime
            .metrics
            .instantiated(&self.label, started.elapsed());
        let result = cell.wasi_cli_run().call_run(&mut store).await;
        let mut outcome = match result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(())) => Err(Failure::RunError(None)),
            Err(error) => match error.downcast_ref::<wasmtime_wasi::I32Exit>() {
                Some(exit) if exit.0 == 0 => Ok(()),
                Some(exit) => Err(Failure::Exit {
                    status: exit.0,
                    said: None,
                }),
                None => match error.downcast_ref::<LimitExceeded>() {
                    Some(exceeded) => Err(Failure::Limit(*exceeded)),
                    None => Err(Failure::Trap(error.into())),
                },
            },
        };
        // A guest that fails after memory was refused most likely failed because of it.
        if outcome.is_err() && store.data().memory.hit {
            outcome = Err(Failure::Limit(LimitExceeded::Memory(self.limits.memory_mb)));
        }
        // What the guest wrote and did not flush goes out now, whether it still holds
        // its output stream or not (the bytes wait in the writer, not in the stream
        // resource). A failed instance gets a moment, not forever: a peer that does
        // not read must not keep it alive.
        let flush = async {
            match stdout.as_mut() {
                Some(stdout) => io::flush(&mut **stdout).await.map_err(|e| e.to_string()),
                None => writer.flush_pending().await.map_err(|e| e.to_string()),
            }
        };
        let flushed = match outcome {
            Ok(()) => flush.await,
            Err(_) => tokio::time::timeout(FAILURE_FLUSH, flush)
                .await
                .unwrap_or(Ok(())),
        };
        if let Err(error) = flushed {
            tracing::debug!(%error, "flushing the guest's output failed");
        }
        // Dropping the store drops the guest's stderr, so a line it left unfinished
        // counts too.
        drop(store);
        if let Err(Failure::RunError(said) | Failure::Exit { said, .. }) = &mut outcome {
            *said = stderr.last_line();
        }
        outcome
    }
}

/// One instance's entry in the metrics: started on creation, ended on drop, so the
/// counts stay right even if the serving task is cancelled mid-await.
struct Record<'a> {
    metrics: &'a Metrics,
    label: &'a CellLabel,
    traffic: Arc<Traffic>,
    started: Instant,
    /// The failure's kind, or `None` for success; "aborted" until set.
    failure: Option<&'static str>,
}

impl<'a> Record<'a> {
    fn start(metrics: &'a Metrics, label: &'a CellLabel, traffic: Arc<Traffic>) -> Self {
        metrics.started(label);
        Self {
            metrics,
            label,
            traffic,
            started: Instant::now(),
            failure: Some("aborted"),
        }
    }
}

impl Drop for Record<'_> {
    fn drop(&mut self) {
        let bytes = (
            self.traffic.bytes_in.load(Ordering::Relaxed),
            self.traffic.bytes_out.load(Ordering::Relaxed),
        );
        self.metrics
            .ended(self.label, self.failure, self.started.elapsed(), bytes);
    }
}

/// Resolves when a stream has been idle, or open, for longer than its limits (or
/// its caller's deadline) allow.
async fn watchdog(limits: &Limits, chain: Chain, traffic: &Traffic) -> LimitExceeded {
    let wall = async {
        match chain.deadline {
            Some((deadline, _)) => tokio::time::sleep_until(deadline).await,
            None => std::future::pending().await,
        }
    };
    let idle = async {
        let Some(idle) = limits.idle() else {
            return std::future::pending().await;
        };
        loop {
            let deadline = traffic.last_activity() + idle;
            tokio::time::sleep_until(deadline.into()).await;
            if traffic.last_activity() + idle <= std::time::Instant::now() {
                return;
            }
        }
    };
    tokio::select! {
        () = wall => match chain.deadline {
            Some((_, Some(given))) => {
                LimitExceeded::CallerDeadline(u64::try_from(given.as_millis()).unwrap_or(u64::MAX))
            }
            _ => LimitExceeded::Wall(limits.wall_s),
        },
        () = idle => LimitExceeded::Idle(limits.idle_s),
    }
}

/// The peer stream as the guest will see it.
enum Io {
    /// Handed over by `create-connection`.
    Connection(Connection),
    /// As the guest's stdin and stdout.
    Stdio {
        stdin: AsyncStdinStream,
        stdout: AsyncStdoutStream,
    },
}

impl Cell {
    /// How this cell reaches its peer stream.
    pub fn mode(&self) -> &'static str {
        self.mode.name()
    }

    /// Whether its compiled code came from the cache rather than the compiler.
    pub fn cached(&self) -> bool {
        self.cached
    }
}
