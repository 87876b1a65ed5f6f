//! Point-to-point links between two network namespaces that hold every packet for a
//! chosen delay (this kernel has no `sch_netem`, so the delay is made here).
//!
//! A link is two TUN devices, one in each namespace, and four threads in this process:
//! per direction a reader that stamps each packet with the time it is due and a writer
//! that sleeps until then. Order is kept; a direction with 4096 packets queued drops
//! the next ones, as a router's full queue would.

use std::fs::File;
use std::io::{self, Read as _, Write as _};
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd as _;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, TrySendError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// Packets a direction holds before it drops new ones.
const QUEUE: usize = 4096;
/// MTU of both TUN devices.
const MTU: usize = 1500;
/// How long a reader waits for a packet before it looks at the stop flag again.
const POLL_MS: i32 = 50;

/// Runs `f` on a fresh thread that first joins network namespace `netns` (a name under
/// `/var/run/netns`, as `ip netns add` makes), so sockets and TUN devices `f` creates
/// live there. The calling thread stays where it is; what `f` returns works from any.
pub fn in_netns<T: Send + 'static>(
    netns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> io::Result<T> {
    let path = format!("/var/run/netns/{netns}");
    let thread = thread::spawn(move || -> io::Result<T> {
        let ns = File::open(&path).map_err(|e| with_context(e, &format!("open {path}")))?;
        // SAFETY: `ns` is an open namespace file; setns only changes this thread.
        if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(with_context(
                io::Error::last_os_error(),
                &format!("setns {path}"),
            ));
        }
        Ok(f())
    });
    thread
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// One end of a [`DelayedLink`].
#[derive(Clone, Copy, Debug)]
pub struct Side<'a> {
    /// The namespace this end lives in.
    pub netns: &'a str,
    /// Name of the TUN device created there (at most 15 bytes).
    pub device: &'a str,
    /// This end's address.
    pub address: Ipv4Addr,
    /// The other end's address, in the same /30 as `address`: the link is a subnet
    /// of its own. (Not `ip addr add A peer B`: libp2p's interface watcher, if-watch
    /// 3.2, reads a point-to-point address's peer as the local one, so a node
    /// listening on 0.0.0.0 would announce the other end's address.)
    pub peer: Ipv4Addr,
}

/// What one direction of a link has done so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Traffic {
    /// Packets delivered to the far side.
    pub packets: u64,
    /// Bytes in those packets (IP headers included).
    pub bytes: u64,
    /// Packets dropped because the queue was full or the far device refused them.
    pub dropped: u64,
}

#[derive(Default)]
struct Counters {
    packets: AtomicU64,
    bytes: AtomicU64,
    dropped: AtomicU64,
}

/// A point-to-point IPv4 link between two namespaces that delays every packet by a fixed
/// time in each direction. Dropping it stops its threads and removes both devices.
pub struct DelayedLink {
    delay: Duration,
    stop: Arc<AtomicBool>,
    /// `[a → b, b → a]`.
    counters: [Arc<Counters>; 2],
    threads: Vec<JoinHandle<()>>,
}

impl DelayedLink {
    /// Creates a TUN device in each side's namespace, gives it its address and peer,
    /// brings it up, and forwards packets between the two after `delay` (zero forwards
    /// at once).
    pub fn new(a: Side, b: Side, delay: Duration) -> io::Result<DelayedLink> {
        let tun_a = Arc::new(create_tun(a)?);
        let tun_b = Arc::new(create_tun(b)?);
        let mut link = DelayedLink {
            delay,
            stop: Arc::new(AtomicBool::new(false)),
            counters: Default::default(),
            threads: Vec::new(),
        };
        // Threads start only once both devices exist; if a spawn fails, dropping
        // `link` stops the ones already running.
        for (i, (from, to)) in [(&tun_a, &tun_b), (&tun_b, &tun_a)].into_iter().enumerate() {
            let (stop, counters) = (link.stop.clone(), link.counters[i].clone());
            forward(
                from.clone(),
                to.clone(),
                delay,
                stop,
                counters,
                &mut link.threads,
            )?;
        }
        Ok(link)
    }

    /// The delay each packet gets in each direction.
    pub fn delay(&self) -> Duration {
        self.delay
    }

    /// Traffic from side `a` to side `b` so far.
    pub fn a_to_b(&self) -> Traffic {
        traffic(&self.counters[0])
    }

    /// Traffic from side `b` to side `a` so far.
    pub fn b_to_a(&self) -> Traffic {
        traffic(&self.counters[1])
    }
}

impl Drop for DelayedLink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// Starts one direction: a reader that stamps each packet from `from` with the time it
/// is due and queues it, and a writer that writes it to `to` then.
fn forward(
    from: Arc<File>,
    to: Arc<File>,
    delay: Duration,
    stop: Arc<AtomicBool>,
    counters: Arc<Counters>,
    threads: &mut Vec<JoinHandle<()>>,
) -> io::Result<()> {
    let (tx, rx) = mpsc::sync_channel::<(Instant, Vec<u8>)>(QUEUE);
    let reader_stop = stop.clone();
    let reader_counters = counters.clone();
    threads.push(
        thread::Builder::new()
            .name("link reader".into())
            .spawn(move || {
                let mut buf = vec![0; 1 << 16];
                while let Some(n) = read_packet(&from, &mut buf, &reader_stop) {
                    let packet = (Instant::now() + delay, buf[..n].to_vec());
                    if let Err(TrySendError::Full(_)) = tx.try_send(packet) {
                        reader_counters.dropped.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })?,
    );
    threads.push(
        thread::Builder::new()
            .name("link writer".into())
            .spawn(move || {
                // Ends when the reader stops and drops its sender.
                for (due, packet) in rx {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    thread::sleep(due.saturating_duration_since(Instant::now()));
                    match (&*to).write(&packet) {
                        Ok(n) => {
                            counters.packets.fetch_add(1, Ordering::Relaxed);
                            counters.bytes.fetch_add(n as u64, Ordering::Relaxed);
                        }
                        Err(_) => _ = counters.dropped.fetch_add(1, Ordering::Relaxed),
                    }
                }
            })?,
    );
    Ok(())
}

fn traffic(c: &Counters) -> Traffic {
    Traffic {
        packets: c.packets.load(Ordering::Relaxed),
        bytes: c.bytes.load(Ordering::Relaxed),
        dropped: c.dropped.load(Ordering::Relaxed),
    }
}

/// Waits for one packet on `tun`; `None` once `stop` is set or the device fails.
fn read_packet(tun: &File, buf: &mut [u8], stop: &AtomicBool) -> Option<usize> {
    let mut fd = libc::pollfd {
        fd: tun.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    while !stop.load(Ordering::Relaxed) {
        // SAFETY: one valid pollfd, alive for the call.
        if unsafe { libc::poll(&mut fd, 1, POLL_MS) } < 0
            && io::Error::last_os_error().kind() != io::ErrorKind::Interrupted
        {
            return None;
        }
        if fd.revents != 0 {
            // Readable or failed: a failed read (the device is gone) ends the reader.
            return (&*tun).read(buf).ok();
        }
    }
    None
}

/// Creates `side.device` as a TUN device (no packet-info header) in `side.netns` and
/// configures it with `ip`. The device lives as long as the returned file.
fn create_tun(side: Side) -> io::Result<File> {
    let name = side.device.as_bytes();
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("bad device name {:?}", side.device),
        ));
    }
    let name = name.to_vec();
    let tun = in_netns(side.netns, move || -> io::Result<File> {
        // SAFETY: ifreq is plain data; all zeroes is a valid value.
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        for (dst, src) in req.ifr_name.iter_mut().zip(name) {
            *dst = src as libc::c_char;
        }
        req.ifr_ifru.ifru_flags = (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short;
        let tun = File::options()
            .read(true)
            .write(true)
            .open("/dev/net/tun")?;
        // SAFETY: TUNSETIFF reads and writes one ifreq, which outlives the call.
        if unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETIFF, &mut req) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(tun)
    })?
    .map_err(|e| with_context(e, &format!("create TUN {} in {}", side.device, side.netns)))?;
    let (ns, dev) = (side.netns, side.device);
    ip(&format!("-n {ns} link set dev {dev} mtu {MTU} up"))?;
    let subnet = |ip: Ipv4Addr| u32::from(ip) >> 2;
    if subnet(side.address) != subnet(side.peer) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} and {} are not in one /30", side.address, side.peer),
        ));
    }
    ip(&format!("-n {ns} addr add {}/30 dev {dev}", side.address))?;
    Ok(tun)
}

/// Runs `ip` with `args` (split at spaces), failing with its stderr if it fails.
fn ip(args: &str) -> io::Result<()> {
    let out = Command::new("ip")
        .args(args.split(' '))
        .output()
        .map_err(|e| with_context(e, "run ip"))?;
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    Err(io::Error::other(format!("ip {args}: {}", stderr.trim())))
}

fn with_context(e: io::Error, what: &str) -> io::Error {
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};

    const A: Ipv4Addr = Ipv4Addr::new(198, 18, 255, 1);
    const B: Ipv4Addr = Ipv4Addr::new(198, 18, 255, 2);
    const PATIENCE: Duration = Duration::from_secs(30);

    /// Two namespaces `wwlab-<pid>-<test>-{a,b}`, deleted on drop (even on panic).
    struct Pair {
        a: String,
        b: String,
    }

    impl Pair {
        /// `None` (after saying why) when not root.
        fn new(test: &str) -> Option<Pair> {
            // SAFETY: geteuid has no preconditions.
            if unsafe { libc::geteuid() } != 0 {
                eprintln!("skipped: needs root to create network namespaces");
                return None;
            }
            let name = |end| format!("wwlab-{}-{test}-{end}", std::process::id());
            let pair = Pair {
                a: name("a"),
                b: name("b"),
            };
            for ns in [&pair.a, &pair.b] {
                ip(&format!("netns add {ns}")).unwrap();
            }
            Some(pair)
        }

        fn link(&self, delay: Duration) -> DelayedLink {
            let a = Side {
                netns: &self.a,
                device: "wwa",
                address: A,
                peer: B,
            };
            let b = Side {
                netns: &self.b,
                device: "wwb",
                address: B,
                peer: A,
            };
            DelayedLink::new(a, b, delay).unwrap()
        }
    }

    impl Drop for Pair {
        fn drop(&mut self) {
            for ns in [&self.a, &self.b] {
                let _ = ip(&format!("netns delete {ns}"));
            }
        }
    }

    /// A listener in `b` and a stream from `a` connected to it, with the accepted end.
    fn tcp(pair: &Pair) -> (TcpStream, TcpStream) {
        let listener = in_netns(&pair.b, || TcpListener::bind((B, 0)))
            .unwrap()
            .unwrap();
        let to = listener.local_addr().unwrap();
        let client = in_netns(&pair.a, move || TcpStream::connect_timeout(&to, PATIENCE))
            .unwrap()
            .unwrap();
        let (server, _) = listener.accept().unwrap();
        for s in [&client, &server] {
            s.set_read_timeout(Some(PATIENCE)).unwrap();
            s.set_write_timeout(Some(PATIENCE)).unwrap();
        }
        (client, server)
    }

    #[test]
    fn tcp_crosses_a_zero_delay_link_both_ways() {
        let Some(pair) = Pair::new("tcp") else { return };
        let link = pair.link(Duration::ZERO);
        let (mut client, mut server) = tcp(&pair);
        client.write_all(b"ping from a").unwrap();
        let mut buf = [0; 11];
        server.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"ping from a");
        server.write_all(b"pong from b").unwrap();
        client.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"pong from b");
        assert!(link.a_to_b().packets >= 2 && link.b_to_a().packets >= 2);
    }

    #[test]
    fn a_delayed_link_holds_each_packet_for_its_delay() {
        let Some(pair) = Pair::new("rtt") else { return };
        let link = pair.link(Duration::from_millis(25));
        let echo = in_netns(&pair.b, || UdpSocket::bind((B, 0)))
            .unwrap()
            .unwrap();
        let to: SocketAddr = echo.local_addr().unwrap();
        echo.set_read_timeout(Some(PATIENCE)).unwrap();
        let echoer = thread::spawn(move || {
            let mut buf = [0; 64];
            while let Ok((n, from)) = echo.recv_from(&mut buf) {
                if echo.send_to(&buf[..n], from).is_err() || &buf[..n] == b"bye" {
                    break;
                }
            }
        });
        let ping = in_netns(&pair.a, || UdpSocket::bind((A, 0)))
            .unwrap()
            .unwrap();
        ping.set_read_timeout(Some(PATIENCE)).unwrap();
        let mut rtts = Vec::new();
        for i in 0..10u8 {
            let sent = Instant::now();
            ping.send_to(&[i], to).unwrap();
            let mut buf = [0; 64];
            let n = ping.recv(&mut buf).unwrap();
            rtts.push(sent.elapsed());
            assert_eq!(&buf[..n], &[i]);
        }
        ping.send_to(b"bye", to).unwrap();
        echoer.join().unwrap();
        rtts.sort();
        eprintln!(
            "RTT over 2×{:?}: min {:?}, median {:?}, max {:?}",
            link.delay(),
            rtts[0],
            rtts[5],
            rtts[9]
        );
        assert!(
            rtts[0] >= 2 * link.delay(),
            "a packet was not held: {rtts:?}"
        );
    }

    #[test]
    fn megabytes_of_tcp_cross_a_delayed_link() {
        let Some(pair) = Pair::new("bulk") else {
            return;
        };
        let link = pair.link(Duration::from_millis(5));
        let (mut client, mut server) = tcp(&pair);
        const SIZE: usize = 8 << 20;
        let started = Instant::now();
        let sender = thread::spawn(move || {
            let chunk: Vec<u8> = (0..64 << 10).map(|i| i as u8).collect();
            for _ in 0..SIZE / chunk.len() {
                client.write_all(&chunk).unwrap();
            }
        });
        let mut received = Vec::with_capacity(SIZE);
        let mut buf = vec![0; 64 << 10];
        while received.len() < SIZE {
            let n = server.read(&mut buf).unwrap();
            assert!(n > 0, "connection closed after {} bytes", received.len());
            received.extend_from_slice(&buf[..n]);
        }
        sender.join().unwrap();
        let secs = started.elapsed().as_secs_f64();
        assert!(
            received
                .iter()
                .enumerate()
                .all(|(i, &b)| b == (i % (64 << 10)) as u8)
        );
        eprintln!(
            "{} MiB over a 2×{:?} link in {secs:.2} s: {:.1} MiB/s; a→b {:?}, b→a {:?}",
            SIZE >> 20,
            link.delay(),
            SIZE as f64 / (1 << 20) as f64 / secs,
            link.a_to_b(),
            link.b_to_a()
        );
    }

    #[test]
    fn drop_returns_after_the_namespaces_are_deleted() {
        let Some(pair) = Pair::new("gone") else {
            return;
        };
        let link = pair.link(Duration::from_millis(25));
        drop(pair);
        let (done, finished) = mpsc::channel();
        thread::spawn(move || {
            drop(link);
            done.send(()).unwrap();
        });
        finished
            .recv_timeout(PATIENCE)
            .expect("DelayedLink::drop hung");
    }
}
