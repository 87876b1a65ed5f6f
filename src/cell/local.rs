//! `ww cell`: one cell run locally, with its stream on this terminal's stdin and
//! stdout — its arguments and its code.

use std::path::PathBuf;

use anyhow::Context as _;

use super::{CellOptions, DialGrant, Mode, PeerWriter, Runtime};
use crate::limits::{LimitOverrides, Limits};

/// `ww cell`'s arguments.
#[derive(Debug, clap::Args)]
pub struct CellArgs {
    /// The component.
    pub wasm: PathBuf,
    /// Extra arguments for the guest (after its protocol argument).
    pub args: Vec<String>,
    /// How the cell reaches its stream [default: detected from its imports].
    #[arg(long, value_enum)]
    pub mode: Option<Mode>,
    /// Compile the cell even if it is in the cache, and do not cache it.
    #[arg(long)]
    pub no_cache: bool,
    /// Limits for its one instance.
    #[command(flatten)]
    pub limits: LimitOverrides,
}

impl CellArgs {
    /// Runs the cell once, on stdin and stdout, offline.
    pub async fn run(self) -> anyhow::Result<()> {
        let limits = self.limits.apply(Limits::DEFAULT);
        limits.check()?;
        // One instance: allocating it on demand beats reserving a pool.
        let cache = crate::config::cache_dir(self.no_cache, None, None).map(super::Cache::open);
        let runtime = Runtime::new(None, Default::default(), cache.transpose()?)?;
        let wasm = self.wasm;
        let name = wasm
            .file_stem()
            .map_or("cell".into(), |s| s.to_string_lossy().into());
        let options = CellOptions {
            name,
            limits,
            mode: self.mode,
            // Offline: a dialing cell loads, and its dials fail cleanly.
            dial: DialGrant::Any,
            network: None,
        };
        let cell = super::load_file(&runtime, &wasm, &options)?;
        let mut argv = vec![wasm.display().to_string()];
        argv.extend(self.args);
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let stdout = PeerWriter::new(tokio::io::stdout(), false);
        let never = tokio_util::sync::CancellationToken::new();
        cell.serve(&argv, tokio::io::stdin(), stdout, &never)
            .await
            .with_context(|| format!("{}", wasm.display()))
    }
}
