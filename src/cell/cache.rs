//! The compiled-cell cache: a component is compiled once and its machine code kept on
//! disk, so the next start only maps it back in.
//!
//! Entries are named by the SHA-256 of the component and a hash of the engine's
//! compatibility settings (wasmtime version, target, tunables), so a changed
//! component or engine simply misses. Loading compiled code is trusted by nature,
//! so ww only loads files it wrote: the directory is created mode 0700, entries are
//! written to a temporary name and renamed into place, and an entry not owned by the
//! directory's owner or writable by anyone else is ignored. Any cache failure falls
//! back to compiling; the cache never stops a node from starting.

use std::hash::{Hash, Hasher};
use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

/// A directory of compiled components.
#[derive(Debug, Clone)]
pub struct Cache {
    dir: PathBuf,
}

impl Cache {
    /// The default place: `$XDG_CACHE_HOME/ww/cells` (usually `~/.cache/ww/cells`).
    pub fn default_dir() -> Option<PathBuf> {
        dirs::cache_dir().map(|dir| dir.join("ww").join("cells"))
    }

    /// Opens (creating if needed, mode 0700) the cache in `dir`.
    pub fn open(dir: PathBuf) -> anyhow::Result<Self> {
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder
            .create(&dir)
            .with_context(|| format!("cannot create the cell cache {}", dir.display()))?;
        Ok(Self { dir })
    }

    /// The compiled form of `wasm`: from the cache if it is there, otherwise compiled
    /// now and stored. The flag says whether it came from the cache.
    pub fn load_or_compile(
        &self,
        engine: &Engine,
        wasm: &[u8],
    ) -> wasmtime::Result<(Component, bool)> {
        let path = self.dir.join(entry_name(engine, wasm));
        if self.trusted(&path) {
            // SAFETY: the entry was written by this cache (see `trusted` and the module
            // docs) from a component this engine configuration compiled.
            match unsafe { Component::deserialize_file(engine, &path) } {
                Ok(component) => return Ok((component, true)),
                Err(error) => {
                    tracing::warn!(path = %path.display(), %error, "ignoring a cache entry")
                }
            }
        }
        let component = Component::new(engine, wasm)?;
        if let Err(error) = self.store(&path, &component) {
            tracing::warn!(path = %path.display(), error = %format!("{error:#}"), "cannot cache a compiled cell");
        }
        Ok((component, false))
    }

    fn store(&self, path: &Path, component: &Component) -> anyhow::Result<()> {
        let bytes = component.serialize().map_err(anyhow::Error::from)?;
        let temporary = path.with_extension(format!("tmp{}", std::process::id()));
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(&temporary)?;
        file.write_all(&bytes)?;
        file.sync_all()?;
        std::fs::rename(&temporary, path)?;
        Ok(())
    }

    /// Whether `path` exists and looks like something this cache wrote.
    #[cfg(unix)]
    fn trusted(&self, path: &Path) -> bool {
        use std::os::unix::fs::MetadataExt;
        let (Ok(entry), Ok(dir)) = (
            std::fs::symlink_metadata(path),
            std::fs::metadata(&self.dir),
        ) else {
            return false;
        };
        entry.is_file()
            && entry.uid() == dir.uid()
            && entry.mode() & 0o022 == 0
            && dir.mode() & 0o022 == 0
    }

    #[cfg(not(unix))]
    fn trusted(&self, path: &Path) -> bool {
        path.is_file()
    }
}

/// `<sha256 of the component>-<engine compatibility hash>.cwasm`.
fn entry_name(engine: &Engine, wasm: &[u8]) -> String {
    let digest = Sha256::digest(wasm);
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut hasher);
    env!("CARGO_PKG_VERSION").hash(&mut hasher);
    let hex: String = digest.iter().map(|byte| format!("{byte:02x}")).collect();
    format!("{hex}-{:016x}.cwasm", hasher.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The smallest component there is: the empty one.
    const EMPTY_COMPONENT: &[u8] = b"\0asm\x0d\0\x01\0";

    #[test]
    fn a_second_load_hits_and_a_tampered_entry_is_recompiled() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path().join("cells")).unwrap();
        let engine = Engine::default();
        let (_, hit) = cache.load_or_compile(&engine, EMPTY_COMPONENT).unwrap();
        assert!(!hit);
        let (_, hit) = cache.load_or_compile(&engine, EMPTY_COMPONENT).unwrap();
        assert!(hit);

        let entry = std::fs::read_dir(dir.path().join("cells"))
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        std::fs::write(&entry, b"garbage").unwrap();
        let (_, hit) = cache.load_or_compile(&engine, EMPTY_COMPONENT).unwrap();
        assert!(!hit, "a corrupt entry is ignored");
        let (_, hit) = cache.load_or_compile(&engine, EMPTY_COMPONENT).unwrap();
        assert!(hit, "and replaced");

        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&entry, std::fs::Permissions::from_mode(0o666)).unwrap();
            let (_, hit) = cache.load_or_compile(&engine, EMPTY_COMPONENT).unwrap();
            assert!(!hit, "an entry others could have written is not loaded");
        }
    }
}
