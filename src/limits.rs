//! What one guest or one peer may use. Defaults here ([`Limits::DEFAULT`]); `[limits]`
//! in the config and `ww run` flags change them for the node, `[cells.<name>.limits]`
//! for one cell. Each key means what its [`Limits`] field says; the README's table is
//! the reference for users, and a test keeps its defaults equal to these.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Effective limits: every value set. Serialized as `key = value`, the keys of the
/// config file and the ids of the flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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
    /// Streams of one peer waiting for a slot at once.
    pub backlog: u32,
    /// Longest wait for a free slot, in milliseconds.
    pub queue_ms: u64,
    /// Outbound streams one instance may open.
    pub max_dials: u32,
    /// Dials deep a chain of calls may go from an instance (fewer if the caller's
    /// chain has fewer left).
    pub max_hops: u8,
}

impl Limits {
    /// The limits nobody changed: the one place their numbers are written.
    pub const DEFAULT: Limits = Limits {
        cpu_ms: 10_000,
        wall_s: 0,
        idle_s: 300,
        memory_mb: 64,
        max_instances: 1000,
        max_per_peer: 64,
        backlog: 256,
        queue_ms: 10_000,
        max_dials: 16,
        max_hops: 8,
    };

    /// Each limit's default after its flag's help text (`[default: N]`), in every
    /// subcommand of `command`, so the numbers are written only in [`Limits::DEFAULT`].
    pub fn show_defaults(command: clap::Command) -> clap::Command {
        let defaults = serde_json::to_value(Self::DEFAULT).expect("a struct of numbers");
        command
            .mut_subcommands(Self::show_defaults)
            .mut_args(|arg| match defaults.get(arg.get_id().as_str()) {
                Some(default) => {
                    let help = arg.get_help().map(ToString::to_string).unwrap_or_default();
                    arg.help(format!("{help} [default: {default}]"))
                }
                None => arg,
            })
    }

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

    /// Linear memory per instance, in bytes (saturating; [`Limits::check`] keeps it
    /// within 4 GiB).
    pub fn memory_bytes(&self) -> usize {
        let bytes = self.memory_mb.saturating_mul(1 << 20);
        usize::try_from(bytes).unwrap_or(usize::MAX)
    }

    /// Longest wait for a slot.
    pub fn queue(&self) -> Duration {
        Duration::from_millis(self.queue_ms)
    }

    /// Rejects values that cannot work, naming the key: zero where at least one is
    /// needed, and values past what the node can honour (they would overflow or be
    /// silently cut).
    pub fn check(&self) -> anyhow::Result<()> {
        let at_least_one = [
            ("memory_mb", self.memory_mb),
            ("max_instances", u64::from(self.max_instances)),
            ("max_per_peer", u64::from(self.max_per_peer)),
        ];
        for (key, value) in at_least_one {
            anyhow::ensure!(value > 0, "{key} must be at least 1");
        }
        let at_most = [
            ("cpu_ms", self.cpu_ms, MAX_SECONDS * 1000),
            ("wall_s", self.wall_s, MAX_SECONDS),
            ("idle_s", self.idle_s, MAX_SECONDS),
            ("queue_ms", self.queue_ms, MAX_SECONDS * 1000),
            ("memory_mb", self.memory_mb, MAX_MEMORY_MB),
            ("max_instances", self.max_instances.into(), MAX_INSTANCES),
            ("max_per_peer", self.max_per_peer.into(), MAX_INSTANCES),
            ("backlog", self.backlog.into(), MAX_INSTANCES),
        ];
        for (key, value, max) in at_most {
            anyhow::ensure!(value <= max, "{key} = {value} is more than the most, {max}");
        }
        Ok(())
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Longest time limit, in seconds (a year): longer ones are "never" in disguise, and
/// would overflow deadlines.
pub const MAX_SECONDS: u64 = 365 * 24 * 3600;
/// Largest `memory_mb`: a 32-bit linear memory holds at most 4 GiB.
pub const MAX_MEMORY_MB: u64 = 4096;
/// Largest instance count or backlog.
pub const MAX_INSTANCES: u64 = 1_000_000;

/// Parses a size in MiB: a plain number is MiB (`64`), a number with a unit is
/// converted (`1GiB`, `512m`; see [`parse_size()`]) and must be whole MiB.
pub fn parse_mib(text: &str) -> anyhow::Result<u64> {
    if let Ok(mib) = text.trim().parse::<u64>() {
        return Ok(mib);
    }
    let bytes = parse_size(text)?;
    anyhow::ensure!(
        bytes % (1 << 20) == 0,
        "{text} is not a whole number of MiB"
    );
    Ok(bytes >> 20)
}

/// Parses a size in bytes with the usual suffixes: `4096`, `64k`, `64KiB`, `64m`,
/// `64MB`, `1g`, `1 GiB`. Units are powers of 1024 whether written `m`, `MB` or `MiB`,
/// as `docker -m` and most tools that size buffers read them.
pub fn parse_size(text: &str) -> anyhow::Result<u64> {
    ::parse_size::Config::new()
        .with_binary()
        .parse_size(text.trim())
        .map_err(|error| {
            anyhow::anyhow!("`{text}` is not a size ({error}); e.g. 4096, 64k, 64MiB, 1g")
        })
}

/// A size in bytes in a config file: a number of bytes or a size string (`64MiB`).
pub fn deserialize_size<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    number_or_text(d, parse_size)
}

/// `memory_mb` in a config file: a number of MiB or a size string.
fn deserialize_mib<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    number_or_text(d, parse_mib)
}

/// A number as it is, or a text read by `parse`.
fn number_or_text<'de, D: serde::Deserializer<'de>>(
    d: D,
    parse: fn(&str) -> anyhow::Result<u64>,
) -> Result<Option<u64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum NumberOrText {
        Number(u64),
        Text(String),
    }
    match Option::<NumberOrText>::deserialize(d)? {
        None => Ok(None),
        Some(NumberOrText::Number(number)) => Ok(Some(number)),
        Some(NumberOrText::Text(text)) => parse(&text)
            .map(Some)
            .map_err(|e| serde::de::Error::custom(format!("{e:#}"))),
    }
}

/// Limits as written in a config table or given as flags: only what is set. Their
/// flags' help shows the defaults through [`Limits::show_defaults`]. Serialized with
/// only the keys that are set (a deployment's requested limits travel so).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct LimitOverrides {
    /// CPU time one instance may spend executing wasm, in ms; 0 = no limit.
    #[arg(long, value_name = "MS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_ms: Option<u64>,
    /// Wall-clock limit per stream, in seconds; 0 = none.
    #[arg(long, value_name = "S")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wall_s: Option<u64>,
    /// End a stream with no bytes either way for this long, in seconds; 0 = never.
    #[arg(long, value_name = "S")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle_s: Option<u64>,
    /// Linear memory per instance, all memories together, in MiB or with a unit
    /// (`1GiB`).
    #[arg(long, value_name = "MIB", value_parser = parse_mib)]
    #[serde(
        default,
        deserialize_with = "deserialize_mib",
        skip_serializing_if = "Option::is_none"
    )]
    pub memory_mb: Option<u64>,
    /// Live instances in the node.
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_instances: Option<u32>,
    /// Live instances one peer may hold.
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_per_peer: Option<u32>,
    /// Streams of one peer that may wait for a free slot; more are refused at once.
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backlog: Option<u32>,
    /// How long a stream may wait for a free slot before it is refused, in ms.
    #[arg(long, value_name = "MS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue_ms: Option<u64>,
    /// Streams one instance may open to other nodes through `wetware:streams/dialer`.
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_dials: Option<u32>,
    /// How deep a chain of cells calling cells may go from a stream this node
    /// serves, in dials; at most 255.
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
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
            backlog: self.backlog.unwrap_or(base.backlog),
            queue_ms: self.queue_ms.unwrap_or(base.queue_ms),
            max_dials: self.max_dials.unwrap_or(base.max_dials),
            max_hops: self.max_hops.unwrap_or(base.max_hops),
        }
    }

    /// These overrides laid over `below`'s: a value set here wins, one set only
    /// there stays.
    pub fn over(self, below: LimitOverrides) -> LimitOverrides {
        LimitOverrides {
            cpu_ms: self.cpu_ms.or(below.cpu_ms),
            wall_s: self.wall_s.or(below.wall_s),
            idle_s: self.idle_s.or(below.idle_s),
            memory_mb: self.memory_mb.or(below.memory_mb),
            max_instances: self.max_instances.or(below.max_instances),
            max_per_peer: self.max_per_peer.or(below.max_per_peer),
            backlog: self.backlog.or(below.backlog),
            queue_ms: self.queue_ms.or(below.queue_ms),
            max_dials: self.max_dials.or(below.max_dials),
            max_hops: self.max_hops.or(below.max_hops),
        }
    }

    /// What a deployment that asks for these limits is granted under `ceiling`: each
    /// value asked for, cut to the ceiling's (for the time limits, where 0 means
    /// none, "none" is the most); only the keys asked for are set.
    pub fn granted_under(&self, ceiling: &Limits) -> LimitOverrides {
        /// The lesser of two time limits where 0 is no limit.
        fn time(asked: Option<u64>, most: u64) -> Option<u64> {
            asked.map(|asked| match (asked, most) {
                (_, 0) => asked,
                (0, most) => most,
                (asked, most) => asked.min(most),
            })
        }
        fn less<T: Ord>(asked: Option<T>, most: T) -> Option<T> {
            asked.map(|asked| asked.min(most))
        }
        LimitOverrides {
            cpu_ms: time(self.cpu_ms, ceiling.cpu_ms),
            wall_s: time(self.wall_s, ceiling.wall_s),
            idle_s: time(self.idle_s, ceiling.idle_s),
            memory_mb: less(self.memory_mb, ceiling.memory_mb),
            max_instances: less(self.max_instances, ceiling.max_instances),
            max_per_peer: less(self.max_per_peer, ceiling.max_per_peer),
            backlog: less(self.backlog, ceiling.backlog),
            queue_ms: less(self.queue_ms, ceiling.queue_ms),
            max_dials: less(self.max_dials, ceiling.max_dials),
            max_hops: less(self.max_hops, ceiling.max_hops),
        }
    }

    /// Whether this sets an admission cap of its own (a per-cell gate).
    pub fn caps_admission(&self) -> bool {
        self.max_instances.is_some() || self.max_per_peer.is_some() || self.backlog.is_some()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_deployment_gets_at_most_the_ceiling() {
        let ceiling = Limits {
            wall_s: 0,
            ..Limits::DEFAULT
        };
        let asked = LimitOverrides {
            cpu_ms: Some(0),
            wall_s: Some(30),
            memory_mb: Some(4096),
            max_instances: Some(5),
            ..LimitOverrides::default()
        };
        let granted = asked.granted_under(&ceiling);
        assert_eq!(
            granted.cpu_ms,
            Some(ceiling.cpu_ms),
            "no limit is more than any"
        );
        assert_eq!(granted.wall_s, Some(30), "any limit is less than none");
        assert_eq!(granted.memory_mb, Some(ceiling.memory_mb));
        assert_eq!(granted.max_instances, Some(5));
        assert_eq!(granted.idle_s, None, "only what was asked for is set");
        assert!(granted.caps_admission());
    }

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

    #[test]
    fn flag_help_shows_the_defaults() {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            limits: LimitOverrides,
        }
        let command = Limits::show_defaults(<Cli as clap::CommandFactory>::command());
        let help = |id: &str| {
            let arg = command.get_arguments().find(|arg| arg.get_id() == id);
            arg.unwrap().get_help().unwrap().to_string()
        };
        assert_eq!(
            help("cpu_ms"),
            "CPU time one instance may spend executing wasm, in ms; 0 = no limit [default: 10000]"
        );
        assert!(help("max_hops").ends_with("at most 255 [default: 8]"));
    }

    #[test]
    fn the_readme_table_shows_these_defaults() {
        let defaults = serde_json::to_value(Limits::DEFAULT).unwrap();
        let defaults = defaults.as_object().unwrap();
        let mut rows = 0;
        for line in include_str!("../README.md").lines() {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            let [_, key, flag, default, ..] = cells[..] else {
                continue;
            };
            let key = key.trim_matches('`');
            let Some(value) = defaults.get(key) else {
                continue;
            };
            assert_eq!(flag, format!("`--{}`", key.replace('_', "-")), "{key}");
            assert_eq!(default, value.to_string(), "{key}");
            rows += 1;
        }
        assert_eq!(rows, defaults.len(), "one README row per limit");
    }

    #[test]
    fn impossible_values_are_refused_by_name() {
        let base = Limits::default();
        for (limits, key) in [
            (
                Limits {
                    memory_mb: 17_592_186_044_418,
                    ..base
                },
                "memory_mb",
            ),
            (
                Limits {
                    memory_mb: 1 << 44,
                    ..base
                },
                "memory_mb",
            ),
            (
                Limits {
                    cpu_ms: u64::MAX,
                    ..base
                },
                "cpu_ms",
            ),
            (
                Limits {
                    idle_s: u64::MAX,
                    ..base
                },
                "idle_s",
            ),
            (
                Limits {
                    wall_s: u64::MAX / 1000,
                    ..base
                },
                "wall_s",
            ),
            (
                Limits {
                    queue_ms: u64::MAX,
                    ..base
                },
                "queue_ms",
            ),
            (
                Limits {
                    max_instances: u32::MAX,
                    ..base
                },
                "max_instances",
            ),
            (
                Limits {
                    backlog: u32::MAX,
                    ..base
                },
                "backlog",
            ),
        ] {
            let error = limits.check().unwrap_err().to_string();
            assert!(error.starts_with(key), "{key}: {error}");
        }
        let largest = Limits {
            memory_mb: MAX_MEMORY_MB,
            ..base
        };
        largest.check().unwrap();
        assert_eq!(largest.memory_bytes(), 4 << 30);
    }

    #[test]
    fn sizes_take_the_usual_suffixes() {
        for (text, bytes) in [
            ("4096", 4096),
            ("64k", 64 << 10),
            ("64KiB", 64 << 10),
            ("64m", 64 << 20),
            ("64MB", 64 << 20),
            ("64 MiB", 64 << 20),
            ("1g", 1 << 30),
        ] {
            assert_eq!(parse_size(text).unwrap(), bytes, "{text}");
        }
        assert!(parse_size("lots").is_err());
        assert_eq!(parse_mib("64").unwrap(), 64);
        assert_eq!(parse_mib("1GiB").unwrap(), 1024);
        assert!(parse_mib("1500k").is_err(), "not whole MiB");
        let file: LimitOverrides = toml::from_str("memory_mb = \"256MiB\"").unwrap();
        assert_eq!(file.memory_mb, Some(256));
        let file: LimitOverrides = toml::from_str("memory_mb = 32").unwrap();
        assert_eq!(file.memory_mb, Some(32));
        assert!(toml::from_str::<LimitOverrides>("memory_mb = \"much\"").is_err());
    }
}
