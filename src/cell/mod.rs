//! The cell host: one wasmtime [`Engine`] and [`Linker`] per process, each cell compiled
//! and pre-instantiated once at start-up, and a fresh instance per peer stream.
//!
//! Per stream the only work is: a new `Store`, `instantiate_async` from the cell's
//! [`CellPre`], and `wasi:cli/run`. The stream's halves are handed to the guest
//! through `wetware:streams` (see `wit/streams.wit`) without channels or copies of
//! our own; see [`io`] for the close and backpressure rules.

pub mod builtin;
pub mod cache;
pub mod dialer;
mod host;
mod io;
pub mod local;
pub mod meter;
mod streams;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use tokio::io::AsyncRead;
use tokio_util::sync::CancellationToken;
use wasmtime::component::{Component, Linker};
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, UpdateDeadline,
};
use wasmtime_wasi::WasiCtxBuilder;
use wasmtime_wasi::cli::{AsyncStdinStream, AsyncStdoutStream, StdoutStream as _};

pub use cache::Cache;
use dialer::{Chain, InstanceDialer};
pub use dialer::{DialGrant, DialSetting};
pub use host::Host;
pub use io::{GuestLog, MeteredReader, PeerInputStream, PeerOutputStream, PeerWriter, SyncReader};
pub use meter::LimitExceeded;
pub use streams::{Cell as CellBindings, CellPre, Connection};

use crate::limits::Limits;
use crate::metrics::{CellLabel, Metrics};
use crate::net::network::Network;
use crate::net::status::{CallHeader, Outcome};
use meter::Traffic;

/// The interface a cell must import to reach its peer stream.
pub const STREAMS_INTERFACE: &str = "wetware:streams/streams@0.1.0";
/// The interface a cell imports to open streams of its own.
pub const DIALER_INTERFACE: &str = "wetware:streams/dialer@0.1.0";

/// What [`check_world`] found a component to be.
struct World {
    /// How it reaches its stream.
    mode: Mode,
    /// Whether it imports the dialer.
    dials: bool,
}
/// The export a cell must provide (any `0.2.x` patch release links).
const RUN_EXPORT_PREFIX: &str = "wasi:cli/run@0.2.";

/// How a cell reaches its peer stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Through `wetware:streams/create-connection` (the `cell` world).
    Connection,
    /// As stdin and stdout, like an inetd service: any WASI command works.
    Stdio,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Connection => "connection",
            Mode::Stdio => "stdio",
        }
    }
}

/// How often the engine's epoch advances. A guest in a busy loop yields its worker
/// thread to other tasks once per tick.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Deepest wasm stack a guest may use; deeper recursion traps (the host's stack is
/// never at risk: each instance runs on a fiber stack of its own, larger than this).
pub const MAX_WASM_STACK: usize = 512 << 10;
/// How long a failed instance's output may take to drain before its stream is ended.
const FAILURE_FLUSH: Duration = Duration::from_secs(1);

/// How many instances of what size the engine must be able to hold at once.
#[derive(Debug, Clone, Copy)]
pub struct PoolSize {
    /// Live instances at once.
    pub instances: u32,
    /// The largest linear memory of any one instance, in bytes.
    pub memory_bytes: usize,
}

/// The process-wide wasmtime state that cells are compiled and run with.
pub struct Runtime {
    engine: Engine,
    linker: Linker<Host>,
    metrics: Arc<Metrics>,
    cache: Option<Cache>,
    /// Whether instances come from the pooling allocator.
    pub pooling: bool,
}

impl Runtime {
    /// Creates the engine (pooling allocator if this machine allows it, on-demand
    /// otherwise), its linker with WASI and `wetware:streams`, and the epoch ticker.
    pub fn new(
        pool: Option<PoolSize>,
        metrics: Arc<Metrics>,
        cache: Option<Cache>,
    ) -> anyhow::Result<Arc<Self>> {
        let (engine, pooling) = match Engine::new(&engine_config(pool)) {
            Ok(engine) => (engine, pool.is_some()),
            Err(error) if pool.is_some() => {
                tracing::warn!(%error, "pooling allocator unavailable; allocating instances on demand");
                (
                    Engine::new(&engine_config(None)).map_err(anyhow::Error::from)?,
                    false,
                )
            }
            Err(error) => return Err(error.into()),
        };
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        streams::add_to_linker(&mut linker, Host::streams)?;
        dialer::add_to_linker(&mut linker, Host::dialer)?;
        spawn_epoch_ticker(&engine)?;
        Ok(Arc::new(Self {
            engine,
            linker,
            metrics,
            cache,
            pooling,
        }))
    }

    /// What this runtime's instances did.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Compiles and validates a cell and prepares its instantiation; its instances
    /// will run within `options.limits` and be counted as `options.name`. `source`
    /// names the bytes in error messages (a file path, or `built-in echo`).
    pub fn load(
        self: &Arc<Self>,
        source: &str,
        wasm: &[u8],
        options: &CellOptions,
    ) -> anyhow::Result<Cell> {
        check_header(wasm).with_context(|| format!("{source}: not a WebAssembly component"))?;
        let compiled = match &self.cache {
            Some(cache) => cache.load_or_compile(&self.engine, wasm),
            None => Component::new(&self.engine, wasm).map(|component| (component, false)),
        };
        let (component, cached) = compiled
            .map_err(anyhow::Error::from)
            .with_context(|| format!("{source}: invalid component"))?;
        let world = check_world(&self.engine, &component, options.mode).with_context(|| {
            format!("{source}: is neither a `wetware:streams/cell` nor a WASI command component")
        })?;
        if world.dials && !options.dial.is_granted() {
            bail!(
                "{source}: imports `{DIALER_INTERFACE}`, but cell `{}` is not granted dialing \
                 (set `dial = true` or `dial = [\"/protocol\", …]` in its config table, or \
                 pass --grant-dial PROTOCOL)",
                options.name
            );
        }
        let pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(anyhow::Error::from)
            .with_context(|| format!("{source}: cannot be linked"))?;
        let pre = CellPre::new(pre)
            .map_err(anyhow::Error::from)
            .with_context(|| format!("{source}: does not export `wasi:cli/run`"))?;
        Ok(Cell {
            runtime: self.clone(),
            pre,
            limits: options.limits,
            mode: world.mode,
            grant: Arc::new(options.dial.clone()),
            network: options.network.clone(),
            cached,
            label: CellLabel {
                cell: options.name.clone(),
            },
        })
    }
}

/// A compiled, linked cell, ready to be instantiated once per stream.
#[derive(Clone)]
pub struct Cell {
    runtime: Arc<Runtime>,
    pre: CellPre<Host>,
    limits: Limits,
    mode: Mode,
    /// What its instances may dial.
    grant: Arc<DialGrant>,
    /// The network they dial through, if any.
    network: Option<Network>,
    /// Whether its compiled code came from the cache.
    cached: bool,
    label: CellLabel,
}

/// How to load a cell.
#[derive(Debug, Clone)]
pub struct CellOptions {
    /// Its name in logs and metrics.
    pub name: String,
    /// The limits its instances run within.
    pub limits: Limits,
    /// Force a mode instead of detecting it from the component's imports.
    pub mode: Option<Mode>,
    /// What its instances may dial (`wetware:streams/dialer`).
    pub dial: DialGrant,
    /// The network they dial through; `None` runs them offline (`ww cell`).
    pub network: Option<Network>,
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

fn engine_config(pool: Option<PoolSize>) -> Config {
    let mut config = Config::new();
    config.epoch_interruption(true);
    config.wasm_component_model(true);
    config.max_wasm_stack(MAX_WASM_STACK);
    if let Some(size) = pool {
        let mut pool = PoolingAllocationConfig::default();
        let n = size.instances;
        // A small Rust cell is one component instance made of a few core instances,
        // one memory and a few tables; leave room for larger guests.
        pool.total_component_instances(n)
            .total_core_instances(n.saturating_mul(8))
            .total_memories(n.saturating_mul(2))
            .total_tables(n.saturating_mul(8))
            .total_stacks(n)
            .max_memory_size(size.memory_bytes);
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    }
    config
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

/// Advances the engine's epoch every [`EPOCH_TICK`] for as long as the engine lives,
/// on a thread of its own (as wasmtime's docs suggest): a guest in a busy loop only
/// yields when the epoch moves, so the ticker must never wait for a tokio worker that
/// such a guest occupies. An increment is one atomic add; it wakes no task.
fn spawn_epoch_ticker(engine: &Engine) -> anyhow::Result<()> {
    let engine = engine.weak();
    std::thread::Builder::new()
        .name("ww-epoch".into())
        .spawn(move || {
            loop {
                std::thread::sleep(EPOCH_TICK);
                match engine.upgrade() {
                    Some(engine) => engine.increment_epoch(),
                    None => return,
                }
            }
        })
        .context("cannot start the epoch thread")?;
    Ok(())
}

/// Tells a core module or a non-wasm file from a component, with a hint.
fn check_header(wasm: &[u8]) -> anyhow::Result<()> {
    const MAGIC: &[u8] = b"\0asm";
    match wasm.get(..8) {
        Some(header) if header.starts_with(MAGIC) => match &header[4..] {
            [0x0d, 0x00, 0x01, 0x00] => Ok(()),
            [0x01, 0x00, 0x00, 0x00] => bail!(
                "this is a core WebAssembly module; a cell must be a component \
                 (build it for `wasm32-wasip2`, or wrap it with `wasm-tools component new`)"
            ),
            version => bail!("unknown WebAssembly version or layer {version:02x?}"),
        },
        _ => bail!("no WebAssembly header (`\\0asm`): not a .wasm file"),
    }
}

/// Checks what the linker cannot say clearly — that the component exports
/// `wasi:cli/run` and imports nothing ww lacks — and picks its mode: a component that
/// imports `wetware:streams` is a connection cell, any other command a stdio cell,
/// unless `forced` says otherwise.
fn check_world(
    engine: &Engine,
    component: &Component,
    forced: Option<Mode>,
) -> anyhow::Result<World> {
    let ty = component.component_type();
    let exports: Vec<&str> = ty.exports(engine).map(|(name, _)| name).collect();
    if !exports
        .iter()
        .any(|name| name.starts_with(RUN_EXPORT_PREFIX))
    {
        bail!(
            "it does not export `wasi:cli/run@0.2.x` (exports: {})",
            list(&exports)
        );
    }
    let imports: Vec<&str> = ty.imports(engine).map(|(name, _)| name).collect();
    let unknown: Vec<&str> = imports
        .iter()
        .copied()
        .filter(|name| {
            *name != STREAMS_INTERFACE && *name != DIALER_INTERFACE && !name.starts_with("wasi:")
        })
        .collect();
    if !unknown.is_empty() {
        bail!(
            "it imports {}, which a ww node does not provide",
            list(&unknown)
        );
    }
    let detected = if imports.contains(&STREAMS_INTERFACE) {
        Mode::Connection
    } else {
        Mode::Stdio
    };
    let mode = match forced {
        Some(Mode::Connection) if detected == Mode::Stdio => bail!(
            "mode = \"connection\", but it does not import `{STREAMS_INTERFACE}`, so it cannot \
             reach its peer stream (imports: {})",
            list(&imports)
        ),
        Some(mode) => mode,
        None => detected,
    };
    let dials = imports.contains(&DIALER_INTERFACE);
    Ok(World { mode, dials })
}

fn list(names: &[&str]) -> String {
    if names.is_empty() {
        "none".to_string()
    } else {
        names.join(", ")
    }
}

/// Loads a cell from a file, naming the file in every error.
pub fn load_file(
    runtime: &Arc<Runtime>,
    path: &Path,
    options: &CellOptions,
) -> anyhow::Result<Cell> {
    let wasm = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    runtime.load(&path.display().to_string(), &wasm, options)
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
