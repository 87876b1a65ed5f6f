//! What one guest or one peer may use. Defaults here; `[limits]` in the config and
//! `ww run` flags change them for the node, `[cells.<name>.limits]` for one cell.
//!
//! | key | default | meaning |
//! |---|---|---|
//! | `cpu_ms` | 10000 | time one instance may spend executing wasm (not waiting for I/O); 0 = no limit |
//! | `wall_s` | 0 | wall-clock time one stream may take; 0 = no limit |
//! | `idle_s` | 300 | a stream with no bytes either way for this long is ended; 0 = never |
//! | `memory_mb` | 64 | linear memory of one instance, all its memories together |
//! | `max_instances` | 1000 | live instances (node-wide; per cell when set on a cell) |
//! | `max_per_peer` | 64 | live instances one peer may hold (likewise) |
//! | `queue_ms` | 100 | how long a stream waits for a free slot before it is refused |
//! | `max_dials` | 16 | streams one instance may open to other nodes (`wetware:streams/dialer`) |
//! | `max_hops` | 8 | how deep a chain of cells calling cells may go from a stream this node serves: an instance at the end of the budget gets `hop-limit-reached` when it dials |

use std::time::Duration;

use serde::Deserialize;

/// Effective limits: every value set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// CPU time per instance in wasm, in milliseconds; 0 = none.
    pub cpu_ms: u64,
    /// Wall-clock time per stream, in seconds; 0 = none.
    pub wall_s: u64,
    /// Idle time per stream, in seconds; 0 = none.
    pub idle_s: u64,
    /// Linear memory per instance, in MiB.
    pub memory_mb: u64,
    /// Live instances at once.
    pub max_instances: u32,
    /// Live instances of one peer at once.
    pub max_per_peer: u32,
    /// Longest wait for a free slot, in milliseconds.
    pub queue_ms: u64,
    /// Outbound streams one instance may open.
    pub max_dials: u32,
    /// Dials deep a chain of calls may go from an instance (fewer if the caller's
    /// chain has fewer left).
    pub max_hops: u8,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            cpu_ms: 10_000,
            wall_s: 0,
            idle_s: 300,
            memory_mb: 64,
            max_instances: 1000,
            max_per_peer: 64,
            queue_ms: 100,
            max_dials: 16,
            max_hops: 8,
        }
    }
}

impl Limits {
    /// CPU budget per instance, if any.
    pub fn cpu(&self) -> Option<Duration> {
        (self.cpu_ms > 0).then(|| Duration::from_millis(self.cpu_ms))
    }

    /// Wall-clock budget per stream, if any.
    pub fn wall(&self) -> Option<Duration> {
        (self.wall_s > 0).then(|| Duration::from_secs(self.wall_s))
    }

    /// Idle timeout per stream, if any.
    pub fn idle(&self) -> Option<Duration> {
        (self.idle_s > 0).then(|| Duration::from_secs(self.idle_s))
    }

    /// Linear memory per instance, in bytes.
    pub fn memory_bytes(&self) -> usize {
        usize::try_from(self.memory_mb << 20).unwrap_or(usize::MAX)
    }

    /// Longest wait for a slot.
    pub fn queue(&self) -> Duration {
        Duration::from_millis(self.queue_ms)
    }

    /// Rejects values that cannot work.
    pub fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.memory_mb > 0, "memory_mb must be at least 1");
        anyhow::ensure!(self.max_instances > 0, "max_instances must be at least 1");
        anyhow::ensure!(self.max_per_peer > 0, "max_per_peer must be at least 1");
        Ok(())
    }
}

/// Limits as written in a config table or given as flags: only what is set.
#[derive(Debug, Clone, Copy, Default, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct LimitOverrides {
    /// CPU time one instance may spend executing wasm, in ms; 0 = no limit [default: 10000].
    #[arg(long, value_name = "MS")]
    pub cpu_ms: Option<u64>,
    /// Wall-clock limit per stream, in seconds; 0 = none [default: 0].
    #[arg(long, value_name = "S")]
    pub wall_s: Option<u64>,
    /// End a stream with no bytes either way for this long, in seconds; 0 = never [default: 300].
    #[arg(long, value_name = "S")]
    pub idle_s: Option<u64>,
    /// Linear memory per instance, all memories together, in MiB [default: 64].
    #[arg(long, value_name = "MIB")]
    pub memory_mb: Option<u64>,
    /// Live instances in the node [default: 1000].
    #[arg(long, value_name = "N")]
    pub max_instances: Option<u32>,
    /// Live instances one peer may hold [default: 64].
    #[arg(long, value_name = "N")]
    pub max_per_peer: Option<u32>,
    /// How long a stream may wait for a free slot before it is refused, in ms [default: 100].
    #[arg(long, value_name = "MS")]
    pub queue_ms: Option<u64>,
    /// Streams one instance may open to other nodes through `wetware:streams/dialer`
    /// [default: 16].
    #[arg(long, value_name = "N")]
    pub max_dials: Option<u32>,
    /// How deep a chain of cells calling cells may go from a stream this node
    /// serves, in dials; at most 255 [default: 8].
    #[arg(long, value_name = "N")]
    pub max_hops: Option<u8>,
}

impl LimitOverrides {
    /// `base` with every value set here replaced.
    pub fn apply(&self, base: Limits) -> Limits {
        Limits {
            cpu_ms: self.cpu_ms.unwrap_or(base.cpu_ms),
            wall_s: self.wall_s.unwrap_or(base.wall_s),
            idle_s: self.idle_s.unwrap_or(base.idle_s),
            memory_mb: self.memory_mb.unwrap_or(base.memory_mb),
            max_instances: self.max_instances.unwrap_or(base.max_instances),
            max_per_peer: self.max_per_peer.unwrap_or(base.max_per_peer),
            queue_ms: self.queue_ms.unwrap_or(base.queue_ms),
            max_dials: self.max_dials.unwrap_or(base.max_dials),
            max_hops: self.max_hops.unwrap_or(base.max_hops),
        }
    }

    /// Whether this sets an admission cap of its own (a per-cell gate).
    pub fn caps_admission(&self) -> bool {
        self.max_instances.is_some() || self.max_per_peer.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_layer() {
        let file: LimitOverrides = toml::from_str("cpu_ms = 5\nidle_s = 0").unwrap();
        let flags = LimitOverrides {
            cpu_ms: Some(7),
            ..Default::default()
        };
        let node = flags.apply(file.apply(Limits::default()));
        assert_eq!((node.cpu_ms, node.idle(), node.memory_mb), (7, None, 64));
        assert!(
            toml::from_str::<LimitOverrides>("cpu = 1").is_err(),
            "unknown keys are errors"
        );
        assert!(
            Limits {
                memory_mb: 0,
                ..node
            }
            .check()
            .is_err()
        );
    }
}
