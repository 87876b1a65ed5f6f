//! Metering one instance: CPU time spent executing wasm, linear memory, and the
//! bytes that cross its peer stream (for the idle limit).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use wasmtime::{CallHook, ResourceLimiter};

/// A limit an instance ran into. Its `Display` is the reason the peer is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LimitExceeded {
    /// Too much time executing wasm.
    #[error("cpu limit {0} ms exceeded")]
    Cpu(u64),
    /// Linear memory could not grow past the cap.
    #[error("memory limit {0} MiB exceeded")]
    Memory(u64),
    /// No bytes either way for too long.
    #[error("idle limit {0} s reached")]
    Idle(u64),
    /// The stream took too long.
    #[error("wall-clock limit {0} s reached")]
    Wall(u64),
    /// The cell that dialed this stream had this many milliseconds left, and they
    /// ran out (see `status::CallHeader`).
    #[error("the calling cell's deadline ({0} ms) passed")]
    CallerDeadline(u64),
}

/// Time spent executing wasm, measured at every host/wasm transition.
///
/// Time blocked in a host call (waiting for the peer) does not count. The epoch
/// callback checks the total every tick, so a guest is stopped at most about one
/// tick after its budget ran out.
#[derive(Debug)]
pub struct CpuMeter {
    budget: Option<Duration>,
    used: Duration,
    /// When the guest last entered wasm, while it is in wasm.
    entered: Option<Instant>,
}

impl CpuMeter {
    /// A meter allowing `budget` (unlimited if `None`).
    pub fn new(budget: Option<Duration>) -> Self {
        Self {
            budget,
            used: Duration::ZERO,
            entered: None,
        }
    }

    /// Records a transition between host and wasm.
    pub fn on_hook(&mut self, hook: CallHook) {
        let now = Instant::now();
        if hook.entering_host() {
            if let Some(entered) = self.entered.take() {
                self.used += now - entered;
            }
        } else {
            self.entered = Some(now);
        }
    }

    /// Time in wasm so far, including the current stretch.
    pub fn used(&self) -> Duration {
        self.used
            + self
                .entered
                .map_or(Duration::ZERO, |entered| entered.elapsed())
    }

    /// Whether the budget is spent.
    pub fn exhausted(&self) -> bool {
        self.budget.is_some_and(|budget| self.used() > budget)
    }
}

/// Caps the linear memory of one instance, all its memories together, and the
/// size of its tables.
#[derive(Debug)]
pub struct MemoryLimiter {
    cap: usize,
    used: usize,
    /// Set once a growth was refused.
    pub hit: bool,
}

/// Most elements one table may hold.
const MAX_TABLE_ELEMENTS: usize = 100_000;

impl MemoryLimiter {
    /// A limiter allowing `cap` bytes.
    pub fn new(cap: usize) -> Self {
        Self {
            cap,
            used: 0,
            hit: false,
        }
    }
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let next = self.used - current.min(self.used) + desired;
        if next > self.cap {
            self.hit = true;
            return Ok(false);
        }
        self.used = next;
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _: usize,
        desired: usize,
        _: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}

/// Bytes across a peer stream and when the last one moved; shared by the stream's
/// reader and writer and read by the idle watchdog.
#[derive(Debug)]
pub struct Traffic {
    start: Instant,
    last_ms: AtomicU64,
    /// Bytes read from the peer.
    pub bytes_in: AtomicU64,
    /// Bytes written to the peer.
    pub bytes_out: AtomicU64,
}

impl Default for Traffic {
    fn default() -> Self {
        Self {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
        }
    }
}

impl Traffic {
    /// Records bytes read from the peer.
    pub fn received(&self, n: usize) {
        self.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
        self.touch();
    }

    /// Records bytes written to the peer.
    pub fn sent(&self, n: usize) {
        self.bytes_out.fetch_add(n as u64, Ordering::Relaxed);
        self.touch();
    }

    fn touch(&self) {
        let now = self.start.elapsed().as_millis() as u64;
        self.last_ms.fetch_max(now, Ordering::Relaxed);
    }

    /// When bytes last moved (or the stream started).
    pub fn last_activity(&self) -> Instant {
        self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_is_capped_across_memories() {
        let mut limiter = MemoryLimiter::new(100);
        assert!(limiter.memory_growing(0, 60, None).unwrap());
        assert!(
            !limiter.memory_growing(0, 60, None).unwrap(),
            "a second memory counts too"
        );
        assert!(limiter.hit);
        assert!(limiter.memory_growing(60, 100, None).unwrap());
    }

    #[test]
    fn only_time_in_wasm_counts() {
        let mut meter = CpuMeter::new(Some(Duration::from_millis(30)));
        meter.on_hook(CallHook::CallingWasm);
        std::thread::sleep(Duration::from_millis(20));
        meter.on_hook(CallHook::CallingHost);
        std::thread::sleep(Duration::from_millis(50)); // blocked on I/O: free
        assert!(!meter.exhausted());
        meter.on_hook(CallHook::ReturningFromHost);
        std::thread::sleep(Duration::from_millis(20));
        assert!(meter.exhausted());
    }
}
