//! `ww devnet N`: a cluster of N nodes on 127.0.0.1, one command away.
//!
//! Every node is a `ww run` process of its own (so one can be killed to see what the
//! others do), with its identity and log in a directory of its own under the devnet's
//! directory. Node *i* listens on TCP and QUIC port `base + i`, confirms that address
//! as external (which makes it a DHT server and lets it relay), and bootstraps from
//! node 0 and node *i − 1*. Node *i* also serves its dashboard on 127.0.0.1, port
//! `admin base + i` (`base + 1000` unless told), so each links to the others'. The
//! devnet prints a table of peer IDs, addresses and dashboards, then waits; on Ctrl-C or SIGTERM it stops every node (SIGTERM, so they shut down
//! gracefully, then SIGKILL after a grace period) and leaves no process behind.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, bail};
use libp2p::{Multiaddr, PeerId};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::process::{Child, Command};

/// What `ww devnet` was asked for: its arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// How many nodes.
    pub nodes: u16,
    /// Node i listens on TCP and UDP port BASE_PORT + i.
    #[arg(long, default_value_t = 4100)]
    pub base_port: u16,
    /// Node i serves its dashboard on 127.0.0.1:ADMIN_BASE_PORT + i [default:
    /// BASE_PORT + 1000].
    #[arg(long, value_name = "ADMIN_BASE_PORT", conflicts_with = "no_admin")]
    pub admin_base_port: Option<u16>,
    /// Serve no dashboards.
    #[arg(long)]
    pub no_admin: bool,
    /// Where identities and logs go [default: a new directory in the temp dir].
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Serve a component on a protocol on every node (instead of the built-in
    /// cells); repeatable.
    #[arg(long, value_name = "PROTOCOL=FILE.wasm|builtin:NAME")]
    pub cell: Vec<String>,
    /// More `ww run` arguments for every node, after `--`.
    #[arg(last = true)]
    pub node_args: Vec<String>,
}

/// One node of a running devnet.
#[derive(Debug)]
pub struct DevNode {
    /// Its index.
    pub index: u16,
    /// Its peer ID.
    pub peer: PeerId,
    /// Its TCP address, ending in `/p2p/<peer-id>`.
    pub addr: Multiaddr,
    /// Its directory (identity, log).
    pub dir: PathBuf,
    /// Where it serves its dashboard, if it does.
    pub admin: Option<std::net::SocketAddr>,
    child: Child,
}

impl DevNode {
    /// The process ID of the node.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }
}

/// How long nodes get to stop after SIGTERM before they are killed.
const STOP_GRACE: Duration = Duration::from_secs(15);
/// How long a node may take to start listening.
const START_LIMIT: Duration = Duration::from_secs(120);

/// Starts the devnet, prints its table to stdout, runs until `shutdown` resolves,
/// then stops every node.
pub async fn run(
    exe: &Path,
    options: Options,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    if options.nodes == 0 {
        bail!("a devnet needs at least one node");
    }
    check_port_range(options.base_port, options.nodes, "--base-port")?;
    check_ports_free(options.base_port, options.nodes)?;
    if let Some(admin) = options.admin_base() {
        check_port_range(admin, options.nodes, "--admin-base-port")?;
        check_admin_ports_free(admin, options.nodes)?;
    }
    let dir = match &options.dir {
        Some(dir) => dir.clone(),
        None => tempfile::Builder::new()
            .prefix("ww-devnet-")
            .tempdir()?
            .keep(),
    };
    let mut nodes = start(exe, &options, &dir).await?;
    print_table(&nodes, &dir);
    let outcome = watch(&mut nodes, shutdown).await;
    stop(&mut nodes).await;
    outcome
}

impl Options {
    /// Node 0's dashboard port, unless the devnet serves none.
    fn admin_base(&self) -> Option<u16> {
        if self.no_admin {
            return None;
        }
        Some(
            self.admin_base_port.unwrap_or_else(|| {
                u16::try_from(u32::from(self.base_port) + 1000).unwrap_or(u16::MAX)
            }),
        )
    }
}

/// Fails unless ports `base..base + nodes` are all valid ports.
fn check_port_range(base: u16, nodes: u16, flag: &str) -> anyhow::Result<()> {
    let last = u32::from(base) + u32::from(nodes) - 1;
    if base == 0 || last > u32::from(u16::MAX) {
        bail!(
            "ports {base}..={last} do not fit: pick a {flag} between 1 and {}",
            u16::MAX - nodes + 1
        );
    }
    Ok(())
}

/// Fails if a dashboard port the devnet needs is taken (see
/// [`ww::net::check_port_free`]).
fn check_admin_ports_free(base: u16, nodes: u16) -> anyhow::Result<()> {
    for port in (0..nodes).map(|i| base + i) {
        let addr = format!("/ip4/127.0.0.1/tcp/{port}")
            .parse()
            .expect("a valid multiaddr");
        ww::net::check_port_free(&addr)
            .with_context(|| format!("dashboard port {port}"))
            .context("pick another --admin-base-port, or --no-admin")?;
    }
    Ok(())
}

/// Fails if a port the devnet needs is taken (see [`ww::net::check_port_free`]).
fn check_ports_free(base: u16, nodes: u16) -> anyhow::Result<()> {
    for port in (0..nodes).map(|i| base + i) {
        for addr in [
            format!("/ip4/127.0.0.1/tcp/{port}"),
            format!("/ip4/127.0.0.1/udp/{port}/quic-v1"),
        ] {
            let addr = addr.parse().expect("a valid multiaddr");
            ww::net::check_port_free(&addr).context("pick another --base-port")?;
        }
    }
    Ok(())
}

async fn start(exe: &Path, options: &Options, dir: &Path) -> anyhow::Result<Vec<DevNode>> {
    let mut planned = Vec::new();
    for index in 0..options.nodes {
        let node_dir = dir.join(format!("node{index}"));
        std::fs::create_dir_all(&node_dir)
            .with_context(|| format!("cannot create {}", node_dir.display()))?;
        let keypair = ww::identity::load_or_create(&node_dir.join("identity.key"))?;
        let port = options.base_port + index;
        let tcp: Multiaddr = format!("/ip4/127.0.0.1/tcp/{port}").parse()?;
        let peer = keypair.public().to_peer_id();
        planned.push((index, node_dir, port, tcp, peer));
    }
    let full = |i: usize| {
        planned[i]
            .3
            .clone()
            .with_p2p(planned[i].4)
            .expect("own peer ID")
    };
    let mut nodes = Vec::new();
    for (index, node_dir, port, tcp, peer) in &planned {
        let mut args: Vec<String> = vec![
            "run".into(),
            "--identity".into(),
            node_dir.join("identity.key").display().to_string(),
            "--listen".into(),
            tcp.to_string(),
            "--listen".into(),
            format!("/ip4/127.0.0.1/udp/{port}/quic-v1"),
            "--external-address".into(),
            tcp.to_string(),
            "--no-mdns".into(),
        ];
        let i = usize::from(*index);
        let mut bootstrap = vec![0, i.saturating_sub(1)];
        bootstrap.dedup();
        for earlier in bootstrap.into_iter().filter(|&b| b < i) {
            args.extend(["--bootstrap".into(), full(earlier).to_string()]);
        }
        let admin = options
            .admin_base()
            .map(|base| std::net::SocketAddr::from(([127, 0, 0, 1], base + index)));
        if let Some(admin) = admin {
            args.extend(["--admin".into(), admin.to_string()]);
        }
        for cell in &options.cell {
            args.extend(["--cell".into(), cell.clone()]);
        }
        args.extend(options.node_args.iter().cloned());
        let child = spawn(exe, &args, node_dir)
            .await
            .with_context(|| format!("node {index}"))?;
        nodes.push(DevNode {
            index: *index,
            peer: *peer,
            addr: full(i),
            dir: node_dir.clone(),
            admin,
            child,
        });
    }
    Ok(nodes)
}

/// Starts one `ww run`, logs to `dir/ww.log`, and waits for its first address; its
/// further output (relay addresses) goes to `dir/addresses`.
async fn spawn(exe: &Path, args: &[String], dir: &Path) -> anyhow::Result<Child> {
    let log = std::fs::File::create(dir.join("ww.log"))?;
    let mut child = Command::new(exe)
        .args(args)
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start {}", exe.display()))?;
    let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
    let mut addresses = tokio::fs::File::create(dir.join("addresses")).await?;
    let first = tokio::time::timeout(START_LIMIT, lines.next_line())
        .await
        .context("did not start listening in time")??;
    let Some(first) = first else {
        let log = std::fs::read_to_string(dir.join("ww.log")).unwrap_or_default();
        let last: Vec<&str> = log.lines().rev().take(5).collect();
        bail!(
            "exited at start (is the port in use?): {}",
            last.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    };
    addresses.write_all(format!("{first}\n").as_bytes()).await?;
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            if addresses
                .write_all(format!("{line}\n").as_bytes())
                .await
                .is_err()
            {
                break;
            }
        }
    });
    Ok(child)
}

fn print_table(nodes: &[DevNode], dir: &Path) {
    println!(
        "node  pid      peer id                                               address                                                                        dashboard"
    );
    for node in nodes {
        let pid = node.pid().map_or("-".into(), |p| p.to_string());
        let dashboard = node
            .admin
            .map_or("-".into(), |admin| format!("http://{admin}/"));
        println!(
            "{:<5} {:<8} {:<53} {:<78} {}",
            node.index, pid, node.peer, node.addr, dashboard
        );
    }
    println!("identities and logs: {}", dir.display());
    println!(
        "bootstrap from any node, e.g.: ww find /ww/echo/0.1.0 --bootstrap {}",
        nodes[0].addr
    );
}

/// Waits for `shutdown`, reporting nodes that exit on their own (killed to test
/// failure, crashed); the others go on.
async fn watch(nodes: &mut [DevNode], shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    tokio::pin!(shutdown);
    let mut running: Vec<u16> = nodes.iter().map(|node| node.index).collect();
    loop {
        if running.is_empty() {
            bail!("every node has exited");
        }
        let exits = nodes
            .iter_mut()
            .filter(|node| running.contains(&node.index))
            .map(|node| {
                let log = node.dir.join("ww.log");
                Box::pin(async move { (node.index, log, node.child.wait().await) })
            });
        tokio::select! {
            () = &mut shutdown => return Ok(()),
            ((i, log, status), _, _) = futures::future::select_all(exits) => {
                let status = status.map_or_else(|e| e.to_string(), |s| s.to_string());
                eprintln!(
                    "node {i} exited ({status}; its log: {}); the others keep running",
                    log.display()
                );
                running.retain(|&r| r != i);
            }
        }
    }
}

/// Stops every node: SIGTERM, then SIGKILL for any still running after the grace
/// period.
async fn stop(nodes: &mut [DevNode]) {
    for node in nodes.iter() {
        if let Some(pid) = node.pid() {
            terminate(pid);
        }
    }
    let deadline = tokio::time::Instant::now() + STOP_GRACE;
    for node in nodes.iter_mut() {
        match tokio::time::timeout_at(deadline, node.child.wait()).await {
            Ok(_) => {}
            Err(_) => {
                eprintln!("node {} did not stop in time; killing it", node.index);
                let _ = node.child.kill().await;
            }
        }
    }
}

/// Asks a process to shut down gracefully.
fn terminate(pid: u32) {
    #[cfg(unix)]
    if let Ok(pid) = libc::pid_t::try_from(pid) {
        // SAFETY: kill(2) with a valid signal number has no memory effects.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
    }
    #[cfg(not(unix))]
    let _ = pid;
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        options: Options,
    }

    fn admin_base(args: &[&str]) -> Option<u16> {
        let args = ["devnet", "3"].iter().chain(args);
        Cli::try_parse_from(args).unwrap().options.admin_base()
    }

    #[test]
    fn dashboards_sit_a_thousand_ports_above_the_nodes_unless_told() {
        assert_eq!(admin_base(&[]), Some(5100));
        assert_eq!(admin_base(&["--base-port", "7000"]), Some(8000));
        assert_eq!(admin_base(&["--admin-base-port", "9000"]), Some(9000));
        assert_eq!(admin_base(&["--no-admin"]), None);
        let both = ["devnet", "3", "--no-admin", "--admin-base-port", "9000"];
        assert!(Cli::try_parse_from(both).is_err());
    }
}
