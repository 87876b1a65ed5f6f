//! The compiled-cell cache: a component is compiled once and its machine code kept on
//! disk, so the next start only maps it back in.
//!
//! Entries are named by the SHA-256 of the component and a hash of the engine's
//! compatibility settings (wasmtime version, target, tunables), so a changed
//! component or engine simply misses. Loading compiled code runs it unchecked, so an
//! entry is only loaded if it is whole and ww wrote it:
//! - each entry starts with a header and the SHA-256 of the machine code after it,
//!   checked before wasmtime sees a byte: a truncated, bit-flipped or overwritten
//!   entry is logged, recompiled and replaced, never executed;
//! - the directory is created mode 0700 and an entry must be the owner's alone (not
//!   readable or writable by anyone else, mode 0600) and owned by the directory's
//!   owner;
//! - entries are written to a temporary file in the same directory (removed if
//!   anything fails, a full disk included) and renamed into place.
//!
//! Any cache failure falls back to compiling; the cache never stops a node from
//! starting.

use std::hash::{Hash, Hasher};
use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

/// The first bytes of every entry: format and version.
const MAGIC: &[u8; 8] = b"wwcell1\n";
/// Header length: the magic and the SHA-256 of the rest.
const HEADER: usize = MAGIC.len() + 32;

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

    /// The compiled form of `wasm`: from the cache if a whole, trusted entry is there,
    /// otherwise compiled now and stored. The flag says whether it came from the cache.
    pub fn load_or_compile(
        &self,
        engine: &Engine,
        wasm: &[u8],
    ) -> wasmtime::Result<(Component, bool)> {
        let path = self.dir.join(entry_name(engine, wasm));
        match self.load(engine, &path) {
            Ok(Some(component)) => return Ok((component, true)),
            Ok(None) => {}
            Err(error) => {
                tracing::warn!(path = %path.display(), error = %format!("{error:#}"), "bad cache entry; recompiling and replacing it")
            }
        }
        let component = Component::new(engine, wasm)?;
        if let Err(error) = self.store(&path, &component) {
            tracing::warn!(path = %path.display(), error = %format!("{error:#}"), "cannot cache a compiled cell");
        }
        Ok((component, false))
    }

    /// The entry at `path`: `None` if there is none, an error if it is there but
    /// cannot be trusted or is not whole.
    fn load(&self, engine: &Engine, path: &Path) -> anyhow::Result<Option<Component>> {
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(error).context("cannot read it"),
        };
        self.check_owner(path)?;
        let code = verified(&bytes)?;
        // SAFETY: the code is byte for byte what this cache wrote (its digest matches,
        // and only the owner could have written the file), serialized by an engine
        // with this engine's compatibility hash (the entry's name).
        let component = unsafe { Component::deserialize(engine, code) }
            .map_err(anyhow::Error::from)
            .context("wasmtime refused it")?;
        Ok(Some(component))
    }

    fn store(&self, path: &Path, component: &Component) -> anyhow::Result<()> {
        let code = component.serialize().map_err(anyhow::Error::from)?;
        // Created 0600 in the cache directory, and deleted on drop unless persisted:
        // a failed write (a full disk) leaves nothing behind.
        let mut file = tempfile::NamedTempFile::new_in(&self.dir)?;
        file.write_all(MAGIC)?;
        file.write_all(&Sha256::digest(&code))?;
        file.write_all(&code)?;
        file.as_file().sync_all()?;
        file.persist(path)?;
        Ok(())
    }

    /// Refuses an entry someone other than the cache's owner wrote or could write.
    #[cfg(unix)]
    fn check_owner(&self, path: &Path) -> anyhow::Result<()> {
        use std::os::unix::fs::MetadataExt;
        let entry = std::fs::symlink_metadata(path)?;
        let dir = std::fs::metadata(&self.dir)?;
        anyhow::ensure!(entry.is_file(), "not a regular file");
        anyhow::ensure!(
            entry.uid() == dir.uid(),
            "owned by uid {}, not the cache's owner",
            entry.uid()
        );
        anyhow::ensure!(
            entry.mode() & 0o077 == 0,
            "mode {:04o}: other users could read or write it",
            entry.mode() & 0o7777
        );
        anyhow::ensure!(
            dir.mode() & 0o022 == 0,
            "the cache directory is writable by others"
        );
        Ok(())
    }

    #[cfg(not(unix))]
    fn check_owner(&self, _: &Path) -> anyhow::Result<()> {
        Ok(())
    }
}

/// The machine code of an entry whose header and digest check out.
fn verified(entry: &[u8]) -> anyhow::Result<&[u8]> {
    anyhow::ensure!(
        entry.len() >= HEADER && entry.starts_with(MAGIC),
        "not a ww cache entry (or from another version)"
    );
    let (digest, code) = entry[MAGIC.len()..].split_at(32);
    anyhow::ensure!(
        Sha256::digest(code).as_slice() == digest,
        "its contents do not match their digest (corrupted or tampered with)"
    );
    Ok(code)
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

    fn only_entry(dir: &Path) -> PathBuf {
        let entries: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(entries.len(), 1, "{entries:?}");
        entries[0].clone()
    }

    #[test]
    fn a_second_load_hits_and_a_garbage_entry_is_recompiled() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path().join("cells")).unwrap();
        let engine = Engine::default();
        let (_, hit) = cache.load_or_compile(&engine, EMPTY_COMPONENT).unwrap();
        assert!(!hit);
        let (_, hit) = cache.load_or_compile(&engine, EMPTY_COMPONENT).unwrap();
        assert!(hit);

        let entry = only_entry(&dir.path().join("cells"));
        std::fs::write(&entry, b"garbage").unwrap();
        let (_, hit) = cache.load_or_compile(&engine, EMPTY_COMPONENT).unwrap();
        assert!(!hit, "a corrupt entry is ignored");
        let (_, hit) = cache.load_or_compile(&engine, EMPTY_COMPONENT).unwrap();
        assert!(hit, "and replaced");
        assert_eq!(
            only_entry(&dir.path().join("cells")),
            entry,
            "no stray files"
        );
    }

    #[test]
    fn overwritten_machine_code_is_never_loaded() {
        let echo = crate::cell::builtin::find("echo").unwrap().wasm;
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path().join("cells")).unwrap();
        let engine = Engine::default();
        cache.load_or_compile(&engine, echo).unwrap();
        let entry = only_entry(&dir.path().join("cells"));
        let mut bytes = std::fs::read(&entry).unwrap();
        // Overwrite the machine code with breakpoints (a SIGTRAP once run), as a
        // stray write or an attacker would; the ELF around it stays valid and the
        // file keeps its length, owner and mode.
        let text = text_section(&bytes[HEADER..]);
        assert!(!text.is_empty());
        bytes[HEADER + text.start..HEADER + text.end].fill(0xcc);
        std::fs::write(&entry, &bytes).unwrap();
        let (_, hit) = cache.load_or_compile(&engine, echo).unwrap();
        assert!(!hit, "a tampered entry is recompiled, not loaded");
        let (_, hit) = cache.load_or_compile(&engine, echo).unwrap();
        assert!(hit, "and replaced by a good one");
    }

    /// Where the `.text` section of a 64-bit little-endian ELF file is.
    fn text_section(elf: &[u8]) -> std::ops::Range<usize> {
        let u16_at = |at: usize| u16::from_le_bytes(elf[at..at + 2].try_into().unwrap()) as usize;
        let u32_at = |at: usize| u32::from_le_bytes(elf[at..at + 4].try_into().unwrap()) as usize;
        let u64_at = |at: usize| u64::from_le_bytes(elf[at..at + 8].try_into().unwrap()) as usize;
        assert_eq!(&elf[..4], b"\x7fELF");
        let (table, size, count) = (u64_at(0x28), u16_at(0x3a), u16_at(0x3c));
        let header = |i: usize| table + i * size;
        let names = u64_at(header(u16_at(0x3e)) + 0x18);
        (0..count)
            .map(header)
            .find(|&at| elf[names + u32_at(at)..].starts_with(b".text\0"))
            .map(|at| u64_at(at + 0x18)..u64_at(at + 0x18) + u64_at(at + 0x20))
            .expect("a .text section")
    }

    /// A 4 KiB tmpfs, unmounted on drop; `None` where this process may not mount
    /// (not root, no mount namespace rights).
    struct TinyDisk(tempfile::TempDir);

    impl TinyDisk {
        fn mount() -> Option<Self> {
            let dir = tempfile::tempdir().ok()?;
            let mounted = std::process::Command::new("mount")
                .args(["-t", "tmpfs", "-o", "size=4k", "tmpfs"])
                .arg(dir.path())
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|status| status.success());
            mounted.then_some(Self(dir))
        }
    }

    impl Drop for TinyDisk {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg(self.0.path())
                .status();
        }
    }

    #[test]
    fn a_full_disk_leaves_nothing_behind() {
        let Some(disk) = TinyDisk::mount() else {
            eprintln!("skipped: cannot mount a tmpfs here (needs root, as in CI)");
            return;
        };
        let echo = crate::cell::builtin::find("echo").unwrap().wasm;
        let cache = Cache::open(disk.0.path().join("cells")).unwrap();
        let engine = Engine::default();
        // The compiled echo cell is larger than the disk: storing it fails.
        let (_, hit) = cache.load_or_compile(&engine, echo).unwrap();
        assert!(!hit);
        let left: Vec<_> = std::fs::read_dir(disk.0.path().join("cells"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert!(left.is_empty(), "a failed write left {left:?}");
    }

    #[cfg(unix)]
    #[test]
    fn an_entry_others_can_read_or_write_is_not_loaded() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path().join("cells")).unwrap();
        let engine = Engine::default();
        cache.load_or_compile(&engine, EMPTY_COMPONENT).unwrap();
        let entry = only_entry(&dir.path().join("cells"));
        let mode = std::fs::metadata(&entry).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "written owner-only");
        for mode in [0o644, 0o666, 0o640] {
            std::fs::set_permissions(&entry, std::fs::Permissions::from_mode(mode)).unwrap();
            let (_, hit) = cache.load_or_compile(&engine, EMPTY_COMPONENT).unwrap();
            assert!(!hit, "mode {mode:o} is not loaded");
        }
    }
}
