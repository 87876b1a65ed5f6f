//! The `ww` command line: parses arguments, sets up logging and hands each command to
//! the library, where its arguments live beside its code — or, for the tooling that
//! drives nodes (bench, bench-suite, devnet), to [`tools`].

mod tools;

use std::process::ExitCode;

use anyhow::Context as _;
use clap::{CommandFactory as _, FromArgMatches as _, Parser, Subcommand};
use libp2p::Multiaddr;

/// A libp2p node that serves WebAssembly cells: every stream on a cell's protocol
/// runs a fresh guest.
#[derive(Parser)]
#[command(name = "ww", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once per process; boxing `run`'s many flags would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Run a node serving cells (the built-in ones if none are given).
    Run(ww::config::Settings),
    /// Open a stream to a cell: stdin goes to it, what it answers goes to stdout.
    #[command(group = clap::ArgGroup::new("where").required(true).args(["target", "any"]))]
    Dial(ww::dial::DialArgs),
    /// Run N nodes on 127.0.0.1, bootstrapped to one another, until Ctrl-C.
    Devnet(tools::devnet::Options),
    /// Print the nodes that serve a cell, one address (ending in /p2p/<peer-id>) per line.
    Find(ww::dial::FindArgs),
    /// Run a cell locally with its connection on this terminal's stdin and stdout.
    Cell(ww::cell::local::CellArgs),
    /// Load a node: open streams on a protocol, send bytes, read the answers, and
    /// report streams/s, throughput, latency percentiles and errors.
    Bench(tools::bench::BenchArgs),
    /// Run the side-by-side suite: the same echo workloads against raw TCP, a native
    /// rust-libp2p echo and a ww node, all started here on 127.0.0.1.
    BenchSuite(tools::suite::SuiteArgs),
    /// A baseline echo server for the suite (prints its addresses; runs until killed).
    #[command(hide = true)]
    BenchServer {
        #[arg(value_enum)]
        kind: tools::suite::Baseline,
    },
    /// Install a cell on running nodes (which must trust this deployer's peer ID).
    Deploy(ww::manage::DeployArgs),
    /// Stop serving a deployed cell on running nodes.
    Undeploy(ww::manage::UndeployArgs),
    /// List a node's cells: protocol, CID, kind, source, live instances, age.
    Cells(ww::manage::CellsArgs),
    /// Print the peer ID of an identity file (creating it if missing).
    Id(ww::manage::IdArgs),
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
///
/// libp2p-kad's behaviour warns when an automatic bootstrap finds no peer — which a
/// first node always does, twice (one per DHT), moments after it starts — and when a
/// record's replication finds no peer; neither is anything an operator can act on, so
/// only its errors are shown by default (ww logs its own bootstrap failures).
fn default_log_filter(command: &Command) -> &'static str {
    match command {
        Command::Run { .. } => "info,yamux=off,libp2p_kad::behaviour=error",
        _ => "warn,yamux=off,libp2p_kad::behaviour=error",
    }
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Run(settings) => {
            let config = settings.clone().into_config()?;
            let reloads =
                futures::StreamExt::map(hangups(), move |()| settings.clone().into_config());
            ww::node::run(config, shutdown_signals(), reloads).await
        }
        Command::Dial(args) => args.run().await,
        Command::Devnet(options) => {
            let exe = std::env::current_exe().context("cannot find the ww binary")?;
            tools::devnet::run(&exe, options, shutdown_signal()).await
        }
        Command::Find(args) => args.run().await,
        Command::Cell(args) => args.run().await,
        Command::Bench(args) => args.run().await,
        Command::BenchSuite(args) => args.run().await,
        Command::BenchServer { kind } => tools::suite::serve_baseline(kind).await,
        Command::Stats { multiaddr } => ww::dial::stats(multiaddr).await,
        Command::Deploy(args) => args.run().await,
        Command::Undeploy(args) => args.run().await,
        Command::Cells(args) => args.run().await,
        Command::Id(args) => args.run(),
    }
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

/// Every SIGHUP, as they come: the signal to read the configuration again.
fn hangups() -> futures::stream::BoxStream<'static, ()> {
    use futures::StreamExt as _;
    #[cfg(unix)]
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(hangup) => futures::stream::unfold(hangup, |mut hangup| async move {
            hangup.recv().await?;
            tracing::info!("SIGHUP: reading the configuration again");
            Some(((), hangup))
        })
        .boxed(),
        Err(error) => {
            tracing::warn!(%error, "cannot watch for SIGHUP; the configuration is read once");
            futures::stream::empty().boxed()
        }
    }
    #[cfg(not(unix))]
    futures::stream::empty().boxed()
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
