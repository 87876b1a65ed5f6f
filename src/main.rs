//! The `ww` command line: parses arguments and hands over to the library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{CommandFactory as _, FromArgMatches as _, Parser, Subcommand};
use libp2p::Multiaddr;
use ww::config::{self, CellSpec, NodeConfig};

/// A libp2p node that serves WebAssembly cells: every stream on a cell's protocol
/// runs a fresh guest.
#[derive(Parser)]
#[command(name = "ww", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// How `ww run` joins the network.
#[derive(clap::Args)]
struct NetworkArgs {
    /// Join the network (the DHT) through this peer, a full address ending in
    /// /p2p/<peer-id>; repeatable.
    #[arg(long, value_name = "MULTIADDR")]
    bootstrap: Vec<Multiaddr>,
    /// Do not look for peers on the local network with mDNS.
    #[arg(long)]
    no_mdns: bool,
    /// Answer WAN DHT queries: auto (once reachable), server (always) or client
    /// (never) [default: auto]. The LAN DHT (non-global addresses) is always answered.
    #[arg(long, value_enum, value_name = "MODE")]
    dht_mode: Option<ww::net::DhtMode>,
    /// Relay connections for peers that cannot be reached directly (circuit relay v2).
    #[arg(long)]
    relay: bool,
    /// An address others can reach this node at (a public IP, a port forward);
    /// repeatable. Makes the node a DHT server in auto mode and lets it relay.
    #[arg(long, value_name = "MULTIADDR")]
    external_address: Vec<Multiaddr>,
}

// Parsed once per process; boxing `run`'s many flags would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Run a node serving cells (the built-in ones if none are given).
    Run {
        /// Address to listen on; repeatable [default: /ip4/0.0.0.0/tcp/2025 and
        /// /ip4/0.0.0.0/udp/2025/quic-v1].
        #[arg(long, value_name = "MULTIADDR")]
        listen: Vec<Multiaddr>,
        /// Serve a component (FILE.wasm, or builtin:NAME for a cell compiled into ww) on a
        /// protocol; repeatable.
        #[arg(long, value_name = "PROTOCOL=FILE.wasm|builtin:NAME", value_parser = CellSpec::parse_flag)]
        cell: Vec<CellSpec>,
        /// A TOML config file (see the README).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// The identity file, created if missing [default: ~/.local/share/ww/identity.key].
        #[arg(long, value_name = "FILE")]
        identity: Option<PathBuf>,
        /// Only let this peer open streams on this cell (repeatable; the cell then
        /// refuses everyone else).
        #[arg(long, value_name = "PROTOCOL=PEERID", value_parser = config::parse_allow)]
        allow: Vec<(libp2p::StreamProtocol, libp2p::PeerId)>,
        /// Force how the cell on PROTOCOL reaches its stream (stdio or connection);
        /// detected from its imports otherwise. Repeatable.
        #[arg(long, value_name = "PROTOCOL=MODE", value_parser = config::parse_cell_mode)]
        cell_mode: Vec<(libp2p::StreamProtocol, ww::cell::Mode)>,
        /// Let the cell on PROTOCOL open streams to other nodes (any protocol, or only
        /// the listed ones); repeatable.
        #[arg(long, value_name = "PROTOCOL[=TARGET,…]", value_parser = config::parse_dial_grant)]
        grant_dial: Vec<(libp2p::StreamProtocol, ww::cell::DialGrant)>,
        /// Cache compiled cells here [default: ~/.cache/ww/cells]; the last one given wins.
        #[arg(long, value_name = "DIR", overrides_with = "cache_dir")]
        cache_dir: Option<PathBuf>,
        /// Compile every cell at start-up; read and write no cache.
        #[arg(long)]
        no_cache: bool,
        /// Serve /healthz, /metrics and /status over HTTP on this address (e.g.
        /// 127.0.0.1:2026); off unless given.
        #[arg(long, value_name = "ADDR")]
        admin: Option<std::net::SocketAddr>,
        #[command(flatten)]
        network: NetworkArgs,
        #[command(flatten)]
        limits: ww::limits::LimitOverrides,
    },
    /// Open a stream to a cell: stdin goes to it, what it answers goes to stdout.
    #[command(group = clap::ArgGroup::new("where").required(true).args(["target", "any"]))]
    Dial {
        /// The node: a full address ending in /p2p/<peer-id>, or a peer ID alone
        /// (found in the DHT through --bootstrap).
        #[arg(requires = "protocol")]
        target: Option<ww::dial::Target>,
        /// The cell's protocol, e.g. /ww/echo/0.1.0.
        #[arg(value_parser = config::parse_protocol)]
        protocol: Option<libp2p::StreamProtocol>,
        /// Dial any node that serves this protocol (found in the DHT through
        /// --bootstrap), trying the next when one fails.
        #[arg(long, value_name = "PROTOCOL", value_parser = config::parse_protocol, conflicts_with = "protocol")]
        any: Option<libp2p::StreamProtocol>,
        /// A peer to search the DHT through (full address); repeatable.
        #[arg(long, value_name = "MULTIADDR")]
        bootstrap: Vec<Multiaddr>,
    },
    /// Run N nodes on 127.0.0.1, bootstrapped to one another, until Ctrl-C.
    Devnet {
        /// How many nodes.
        nodes: u16,
        /// Node i listens on TCP and UDP port BASE_PORT + i.
        #[arg(long, default_value_t = 4100)]
        base_port: u16,
        /// Where identities and logs go [default: a new directory in the temp dir].
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
        /// Serve a component on a protocol on every node (instead of the built-in
        /// cells); repeatable.
        #[arg(long, value_name = "PROTOCOL=FILE.wasm|builtin:NAME")]
        cell: Vec<String>,
        /// More `ww run` arguments for every node, after `--`.
        #[arg(last = true)]
        node_args: Vec<String>,
    },
    /// Print the nodes that serve a cell, one address (ending in /p2p/<peer-id>) per line.
    Find {
        /// The cell's protocol, e.g. /ww/echo/0.1.0.
        #[arg(value_parser = config::parse_protocol)]
        protocol: libp2p::StreamProtocol,
        /// A peer to search the DHT through (full address); repeatable, at least one.
        #[arg(long, value_name = "MULTIADDR", required = true)]
        bootstrap: Vec<Multiaddr>,
    },
    /// Run a cell locally with its connection on this terminal's stdin and stdout.
    Cell {
        /// The component.
        wasm: PathBuf,
        /// Extra arguments for the guest (after its protocol argument).
        args: Vec<String>,
        /// How the cell reaches its stream [default: detected from its imports].
        #[arg(long, value_enum)]
        mode: Option<ww::cell::Mode>,
        /// Compile the cell even if it is in the cache, and do not cache it.
        #[arg(long)]
        no_cache: bool,
        #[command(flatten)]
        limits: ww::limits::LimitOverrides,
    },
    /// Load a node: open streams on a protocol, send bytes, read the answers, and
    /// report streams/s, throughput, latency percentiles and errors.
    Bench {
        /// The node's address, ending in /p2p/<peer-id>.
        multiaddr: Multiaddr,
        /// The protocol to load, e.g. /ww/echo/0.1.0.
        #[arg(value_parser = config::parse_protocol)]
        protocol: libp2p::StreamProtocol,
        /// Streams in all (unless --duration is given).
        #[arg(long, default_value_t = 1000)]
        streams: u64,
        /// Streams in flight at once.
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
        /// Bytes sent on each stream (a size: 1024, 64k, 64MiB, 1g).
        #[arg(long, default_value = "1024", value_parser = parse_bytes)]
        bytes: usize,
        /// Connections to spread the streams over (each from its own peer).
        #[arg(long, default_value_t = 1)]
        connections: usize,
        /// Run for this many seconds instead of a number of streams.
        #[arg(long, value_name = "S")]
        duration: Option<f64>,
        /// Check that every answer equals what was sent.
        #[arg(long)]
        verify_echo: bool,
        /// Also write the report as JSON to this file.
        #[arg(long, value_name = "FILE")]
        json: Option<PathBuf>,
    },
    /// Run the side-by-side suite: the same echo workloads against raw TCP, a native
    /// rust-libp2p echo and a ww node, all started here on 127.0.0.1.
    BenchSuite {
        /// Small workloads (seconds instead of minutes).
        #[arg(long)]
        quick: bool,
        /// Run every measurement this many times and report the median run.
        #[arg(long, default_value_t = 3)]
        repeat: usize,
        /// Also write every figure and ratio as JSON to this file.
        #[arg(long, value_name = "FILE")]
        json: Option<PathBuf>,
    },
    /// A baseline echo server for the suite (prints its addresses; runs until killed).
    #[command(hide = true)]
    BenchServer {
        #[arg(value_enum)]
        kind: ww::suite::Baseline,
    },
    /// Print a node's counters (live, succeeded and failed instances).
    Stats {
        /// The node's address, ending in /p2p/<peer-id>.
        multiaddr: Multiaddr,
    },
}

fn main() -> ExitCode {
    let mut command = ww::limits::Limits::show_defaults(Cli::command());
    let cli = Cli::from_arg_matches(&command.get_matches_mut())
        .unwrap_or_else(|error| error.format(&mut command).exit());
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new(default_log_filter(&cli.command))
            }),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = tokio::runtime::Runtime::new().expect("cannot start the tokio runtime");
    let result = runtime.block_on(run(cli.command));
    // Reading stdin occupies a blocking thread that never ends by itself.
    runtime.shutdown_background();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("ww: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// `ww run` logs what it does; the one-shot commands stay quiet unless asked.
///
/// Everything yamux logs above debug (at ERROR: too many streams, a bad stream ID, bad
/// credit, an unexpected pong) is a verdict on what the peer sent, and the peer
/// chooses when to trigger it; yamux then closes that connection, which ww logs at
/// debug with the cause. So it is off by default; `RUST_LOG=yamux=debug` shows it.
fn default_log_filter(command: &Command) -> &'static str {
    match command {
        Command::Run { .. } => "info,yamux=off",
        _ => "warn,yamux=off",
    }
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Run {
            listen,
            cell,
            config,
            identity,
            allow,
            cell_mode,
            grant_dial,
            cache_dir,
            no_cache,
            admin,
            network,
            limits,
        } => {
            let file = match config {
                Some(path) => config::File::load(&path)?,
                None => config::File::default(),
            };
            let flags = config::Flags {
                listen,
                identity,
                cells: cell,
                limits,
                allow,
                modes: cell_mode,
                dial_grants: grant_dial,
                admin,
                cache_dir,
                no_cache,
                bootstrap: network.bootstrap,
                no_mdns: network.no_mdns,
                dht: network.dht_mode,
                relay: network.relay,
                external: network.external_address,
            };
            let config = NodeConfig::merge(file, flags)?;
            ww::node::run(config, shutdown_signals()).await
        }
        Command::Dial {
            target,
            protocol,
            any,
            bootstrap,
        } => {
            let (target, protocol) = match (target, protocol, any) {
                (Some(target), Some(protocol), None) => (target, protocol),
                (None, None, Some(protocol)) => (ww::dial::Target::Any, protocol),
                _ => anyhow::bail!("give NODE PROTOCOL, or --any PROTOCOL"),
            };
            let (stdin, stdout) = (tokio::io::stdin(), tokio::io::stdout());
            ww::dial::dial(&target, protocol, bootstrap, stdin, stdout).await
        }
        Command::Devnet {
            nodes,
            base_port,
            dir,
            cell,
            node_args,
        } => {
            let exe = std::env::current_exe().context("cannot find the ww binary")?;
            let mut args: Vec<String> = cell
                .into_iter()
                .flat_map(|c| ["--cell".into(), c])
                .collect();
            args.extend(node_args);
            let options = ww::devnet::Options {
                nodes,
                base_port,
                dir,
                node_args: args,
            };
            ww::devnet::run(&exe, options, shutdown_signal()).await
        }
        Command::Find {
            protocol,
            bootstrap,
        } => {
            let (found, unreachable) = ww::dial::find(&protocol, bootstrap).await?;
            for provider in &unreachable {
                tracing::warn!("provider unreachable: {provider}");
            }
            if found.is_empty() {
                anyhow::bail!("no reachable node serves {protocol}");
            }
            for addr in found {
                println!("{addr}");
            }
            Ok(())
        }
        Command::Cell {
            wasm,
            args,
            mode,
            no_cache,
            limits,
        } => {
            let limits = limits.apply(ww::limits::Limits::DEFAULT);
            limits.check()?;
            // One instance: allocating it on demand beats reserving a pool.
            let cache = config::cache_dir(no_cache, None, None).map(ww::cell::Cache::open);
            let runtime = ww::cell::Runtime::new(None, Default::default(), cache.transpose()?)?;
            let name = wasm
                .file_stem()
                .map_or("cell".into(), |s| s.to_string_lossy().into());
            let options = ww::cell::CellOptions {
                name,
                limits,
                mode,
                // Offline: a dialing cell loads, and its dials fail cleanly.
                dial: ww::cell::DialGrant::Any,
                network: None,
            };
            let cell = ww::cell::load_file(&runtime, &wasm, &options)?;
            let mut argv = vec![wasm.display().to_string()];
            argv.extend(args);
            let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
            let stdout = ww::cell::PeerWriter::new(tokio::io::stdout(), false);
            let never = tokio_util::sync::CancellationToken::new();
            cell.serve(&argv, tokio::io::stdin(), stdout, &never)
                .await
                .with_context(|| format!("{}", wasm.display()))
        }
        Command::Bench {
            multiaddr,
            protocol,
            streams,
            concurrency,
            bytes,
            connections,
            duration,
            verify_echo,
            json,
        } => {
            let options = ww::bench::Options {
                addr: multiaddr,
                protocol,
                streams,
                concurrency,
                bytes,
                connections,
                duration: duration.map(std::time::Duration::from_secs_f64),
                verify_echo,
            };
            bench(options, json.as_deref()).await
        }
        Command::BenchSuite {
            quick,
            repeat,
            json,
        } => {
            let exe = std::env::current_exe().context("cannot find the ww binary")?;
            let report = ww::suite::run_suite(&exe, quick, repeat).await?;
            print!("{}", report.to_table());
            if let Some(path) = json {
                let text = serde_json::to_string_pretty(&report)? + "\n";
                std::fs::write(&path, text)
                    .with_context(|| format!("cannot write {}", path.display()))?;
            }
            Ok(())
        }
        Command::BenchServer { kind } => ww::suite::serve_baseline(kind).await,
        Command::Stats { multiaddr } => {
            let target = ww::dial::Target::Addr(multiaddr);
            let protocol = ww::node::STATS_PROTOCOL;
            let (input, output) = (tokio::io::empty(), tokio::io::stdout());
            ww::dial::dial(&target, protocol, Vec::new(), input, output).await
        }
    }
}

/// Runs `ww bench` with a progress bar on a terminal, and prints the report.
async fn bench(options: ww::bench::Options, json: Option<&std::path::Path>) -> anyhow::Result<()> {
    use std::io::IsTerminal as _;
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
    let started = std::time::Instant::now();
    let progress = |done: u64| {
        if let Some(bar) = &bar {
            if started.elapsed().as_secs() >= 1 && bar.is_hidden() {
                bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
            }
            bar.set_position(done);
        }
    };
    let report = ww::bench::run(&options, &progress).await?;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    print!("{}", report.to_text());
    if let Some(path) = json {
        report.write_json(path)?;
    }
    Ok(())
}

/// A size for a flag: bytes, or with a unit (see [`ww::limits::parse_size`]).
fn parse_bytes(text: &str) -> anyhow::Result<usize> {
    let bytes = ww::limits::parse_size(text)?;
    usize::try_from(bytes).with_context(|| format!("{text} is too large for this machine"))
}

/// Resolves on the first Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    use futures::StreamExt as _;
    shutdown_signals().next().await;
}

/// Every Ctrl-C and SIGTERM, as they come. A signal that cannot be watched is
/// logged and never fires; it must not look like a request to stop.
fn shutdown_signals() -> impl futures::Stream<Item = ()> + Send + Unpin {
    use futures::StreamExt as _;
    let ctrl_c = watch_signal("Ctrl-C", || Box::pin(tokio::signal::ctrl_c()));
    #[cfg(unix)]
    let term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => futures::stream::unfold(term, |mut term| async move {
            term.recv().await?;
            tracing::info!("SIGTERM");
            Some(((), term))
        })
        .boxed(),
        Err(error) => {
            tracing::warn!(%error, "cannot watch for SIGTERM");
            futures::stream::empty().boxed()
        }
    };
    #[cfg(not(unix))]
    let term = futures::stream::empty::<()>().boxed();
    futures::stream::select(ctrl_c.boxed(), term)
}

/// A stream that yields each time `next_signal` resolves with `Ok`, and ends (never
/// yields again) when it fails to register.
fn watch_signal<F>(name: &'static str, next_signal: F) -> impl futures::Stream<Item = ()> + Send
where
    F: FnMut() -> std::pin::Pin<Box<dyn Future<Output = std::io::Result<()>> + Send>> + Send,
{
    futures::stream::unfold(next_signal, move |mut next_signal| async move {
        match next_signal().await {
            Ok(()) => {
                tracing::info!("{name}");
                Some(((), next_signal))
            }
            Err(error) => {
                tracing::warn!(%error, "cannot watch for {name}; it will not stop the node");
                None
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt as _;

    #[tokio::test]
    async fn a_signal_that_cannot_be_watched_never_fires() {
        let failing = watch_signal("test", || {
            Box::pin(async { Err(std::io::Error::other("no signals here")) })
        });
        let mut failing = std::pin::pin!(failing);
        assert_eq!(failing.next().await, None, "ends instead of firing");

        let mut left = 2;
        let firing = watch_signal("test", move || {
            left -= 1;
            let result = if left >= 0 {
                Ok(())
            } else {
                Err(std::io::Error::other("gone"))
            };
            Box::pin(async move { result })
        });
        assert_eq!(firing.collect::<Vec<()>>().await.len(), 2);
    }
}
