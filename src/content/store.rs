//! The content store: the components a node holds, one file per [`ContentId`].
//!
//! Each component lives in the store's directory in a file named by its CID
//! (`bafkrei…`). Nothing but the name says what a file should hold, so:
//! - a write goes to a temporary file in the same directory (mode 0600, removed if
//!   anything fails, a full disk included), is synced, and renamed into place: a
//!   reader sees the whole component or none;
//! - every read hashes the bytes and compares them with the name; a file that does
//!   not match (a flipped bit, a truncated write, someone's edit) is an error naming
//!   the file, and the file is removed so the component can be fetched again.
//!   Corrupt bytes are never returned;
//! - a component over the store's size cap is refused before a byte is written, and
//!   a file over the cap is never read into memory.
//!
//! All methods do blocking file IO. On an async runtime, call [`Store::put_async`] and
//! [`Store::get_async`] (which run on tokio's blocking pool), or wrap the others in
//! `tokio::task::spawn_blocking`; they only touch metadata and are quick.

use std::io::{self, Read as _, Write as _};
use std::path::{Path, PathBuf};

use super::id::{ContentId, ContentMismatch};

/// The default cap on one component: 64 MiB (an interpreter-based guest such as a
/// componentize-py cell is ~18 MB).
pub const DEFAULT_MAX_COMPONENT: u64 = 64 << 20;

/// A directory of components named by their [`ContentId`].
///
/// Cheap to clone: a path and a cap.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
    max_size: u64,
}

/// Why the store could not do what was asked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The store does not hold this component.
    #[error("{0} is not in the content store")]
    NotFound(ContentId),
    /// The component is bigger than the store accepts.
    #[error("a component of {size} bytes is over the content store's cap of {max} bytes")]
    TooLarge {
        /// The component's size.
        size: u64,
        /// The store's cap.
        max: u64,
    },
    /// The file for a component does not hold it; it has been removed.
    #[error("{}: corrupt content ({reason}); removed, fetch it again", path.display())]
    Corrupt {
        /// The file that was removed.
        path: PathBuf,
        /// What was wrong with it.
        reason: Corruption,
    },
    /// The file system failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory concerned.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
}

/// What was wrong with a corrupt file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Corruption {
    /// The bytes hash to another name.
    #[error(transparent)]
    Mismatch(#[from] ContentMismatch),
    /// Bigger than the store would ever have written.
    #[error("{size} bytes, over the store's cap of {max}")]
    OverCap {
        /// The file's size.
        size: u64,
        /// The store's cap.
        max: u64,
    },
}

impl Store {
    /// The default place: `$XDG_DATA_HOME/ww/content` (usually
    /// `~/.local/share/ww/content`), beside the node's identity.
    pub fn default_dir() -> Option<PathBuf> {
        dirs::data_dir().map(|dir| dir.join("ww").join("content"))
    }

    /// Opens (creating if needed, mode 0700) the store in `dir`, refusing components
    /// over `max_size` bytes.
    pub fn open(dir: impl Into<PathBuf>, max_size: u64) -> Result<Self, StoreError> {
        let dir = dir.into();
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder.create(&dir).map_err(|source| StoreError::Io {
            path: dir.clone(),
            source,
        })?;
        Ok(Self { dir, max_size })
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The largest component the store accepts, in bytes.
    pub fn max_size(&self) -> u64 {
        self.max_size
    }

    /// The file that holds (or would hold) `id`.
    pub fn path_of(&self, id: &ContentId) -> PathBuf {
        self.dir.join(id.to_string())
    }

    /// Stores `bytes` and returns their name. Atomic, and idempotent: storing the same
    /// bytes again rewrites the same file (mending it if it was damaged). Refused before
    /// anything is written if over the cap.
    pub fn put(&self, bytes: &[u8]) -> Result<ContentId, StoreError> {
        let size = bytes.len() as u64;
        if size > self.max_size {
            return Err(StoreError::TooLarge {
                size,
                max: self.max_size,
            });
        }
        let id = ContentId::of(bytes);
        let path = self.path_of(&id);
        let io_error = |source| StoreError::Io {
            path: path.clone(),
            source,
        };
        // Created 0600 in the store's directory, and deleted on drop unless persisted.
        let mut file = tempfile::NamedTempFile::new_in(&self.dir).map_err(io_error)?;
        file.write_all(bytes).map_err(io_error)?;
        file.as_file().sync_all().map_err(io_error)?;
        file.persist(&path).map_err(|error| io_error(error.error))?;
        self.sync_dir();
        Ok(id)
    }

    /// The bytes of `id`, checked against it. A file that does not match is removed
    /// and reported as [`StoreError::Corrupt`].
    pub fn get(&self, id: &ContentId) -> Result<Vec<u8>, StoreError> {
        let path = self.path_of(id);
        let io_error = |source| StoreError::Io {
            path: path.clone(),
            source,
        };
        let mut file = match std::fs::File::open(&path) {
            Ok(file) => file,
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                return Err(StoreError::NotFound(*id));
            }
            Err(error) => return Err(io_error(error)),
        };
        let size = file.metadata().map_err(io_error)?.len();
        if size > self.max_size {
            return Err(self.discard(
                path.clone(),
                Corruption::OverCap {
                    size,
                    max: self.max_size,
                },
            ));
        }
        let mut bytes = Vec::with_capacity(size as usize);
        // Never more than the cap, even if the file grows while it is read.
        (&mut file)
            .take(self.max_size + 1)
            .read_to_end(&mut bytes)
            .map_err(io_error)?;
        if let Err(mismatch) = id.verify(&bytes) {
            return Err(self.discard(path.clone(), mismatch.into()));
        }
        Ok(bytes)
    }

    /// Whether the store has a file for `id` (not checked: [`Store::get`] checks).
    pub fn contains(&self, id: &ContentId) -> bool {
        self.path_of(id).is_file()
    }

    /// The names of the components in the store (files whose name is not a
    /// [`ContentId`], such as unfinished writes, are skipped). Not checked.
    pub fn list(&self) -> Result<Vec<ContentId>, StoreError> {
        let io_error = |source| StoreError::Io {
            path: self.dir.clone(),
            source,
        };
        let mut ids = Vec::new();
        for entry in std::fs::read_dir(&self.dir).map_err(io_error)? {
            let entry = entry.map_err(io_error)?;
            let Some(name) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
                continue;
            };
            if entry.file_type().map_err(io_error)?.is_file() {
                ids.push(name);
            }
        }
        ids.sort();
        Ok(ids)
    }

    /// Removes `id`; `false` if it was not there.
    pub fn remove(&self, id: &ContentId) -> Result<bool, StoreError> {
        let path = self.path_of(id);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(source) => Err(StoreError::Io { path, source }),
        }
    }

    /// [`Store::put`] on tokio's blocking pool.
    pub async fn put_async(&self, bytes: Vec<u8>) -> Result<ContentId, StoreError> {
        let store = self.clone();
        let dir = self.dir.clone();
        blocking(dir, move || store.put(&bytes)).await
    }

    /// [`Store::get`] on tokio's blocking pool.
    pub async fn get_async(&self, id: ContentId) -> Result<Vec<u8>, StoreError> {
        let store = self.clone();
        let path = self.path_of(&id);
        blocking(path, move || store.get(&id)).await
    }

    /// Removes a corrupt file and says why; a failure to remove it is logged, the
    /// corruption is still what the caller hears about.
    fn discard(&self, path: PathBuf, reason: Corruption) -> StoreError {
        tracing::warn!(path = %path.display(), %reason, "corrupt component in the content store; removing it");
        if let Err(error) = std::fs::remove_file(&path)
            && error.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(path = %path.display(), %error, "cannot remove a corrupt component");
        }
        StoreError::Corrupt { path, reason }
    }

    /// Makes a rename durable: without it a crash can forget a stored component.
    /// Best effort: the component is in place either way.
    fn sync_dir(&self) {
        #[cfg(unix)]
        if let Err(error) = std::fs::File::open(&self.dir).and_then(|dir| dir.sync_all()) {
            tracing::debug!(dir = %self.dir.display(), %error, "cannot sync the content store's directory");
        }
    }
}

/// Runs `work` on tokio's blocking pool; a panic there is resumed here.
async fn blocking<T: Send + 'static>(
    path: PathBuf,
    work: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result,
        Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
        Err(error) => Err(StoreError::Io {
            path,
            source: io::Error::other(error),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(max: u64) -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("content"), max).unwrap();
        (dir, store)
    }

    #[test]
    fn put_then_get_returns_the_bytes_under_their_name() {
        let (_dir, store) = store(1024);
        let id = store.put(b"hello world").unwrap();
        assert_eq!(id, ContentId::of(b"hello world"));
        assert_eq!(
            store.path_of(&id).file_name().unwrap(),
            "bafkreifzjut3te2nhyekklss27nh3k72ysco7y32koao5eei66wof36n5e"
        );
        assert!(store.contains(&id));
        assert_eq!(store.get(&id).unwrap(), b"hello world");
    }

    #[cfg(unix)]
    #[test]
    fn files_are_private() {
        use std::os::unix::fs::PermissionsExt as _;
        let (_dir, store) = store(1024);
        let id = store.put(b"secret-ish").unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&store.path_of(&id)), 0o600);
        assert_eq!(mode(store.dir()), 0o700);
    }

    #[test]
    fn put_is_idempotent_and_leaves_no_temporary_files() {
        let (_dir, store) = store(1024);
        let first = store.put(b"same").unwrap();
        let second = store.put(b"same").unwrap();
        assert_eq!(first, second);
        assert_eq!(store.list().unwrap(), vec![first]);
        assert_eq!(std::fs::read_dir(store.dir()).unwrap().count(), 1);
        assert_eq!(store.get(&first).unwrap(), b"same");
    }

    #[test]
    fn put_mends_a_damaged_file() {
        let (_dir, store) = store(1024);
        let id = store.put(b"original").unwrap();
        std::fs::write(store.path_of(&id), b"origin").unwrap();
        store.put(b"original").unwrap();
        assert_eq!(store.get(&id).unwrap(), b"original");
    }

    #[test]
    fn over_the_cap_is_refused_before_writing() {
        let (_dir, store) = store(8);
        assert!(store.put(&[7; 8]).is_ok());
        let error = store.put(&[7; 9]).unwrap_err();
        assert!(
            matches!(error, StoreError::TooLarge { size: 9, max: 8 }),
            "{error}"
        );
        assert!(!store.contains(&ContentId::of(&[7; 9])));
        assert_eq!(std::fs::read_dir(store.dir()).unwrap().count(), 1);
    }

    #[test]
    fn a_flipped_byte_is_an_error_naming_the_file_and_the_file_is_removed() {
        let (_dir, store) = store(1024);
        let id = store.put(b"a component's bytes").unwrap();
        let path = store.path_of(&id);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[3] ^= 0x01;
        std::fs::write(&path, &bytes).unwrap();

        let error = store.get(&id).unwrap_err();
        let StoreError::Corrupt {
            path: reported,
            reason: Corruption::Mismatch(mismatch),
        } = &error
        else {
            panic!("expected a mismatch, got {error}");
        };
        assert_eq!(reported, &path);
        assert_eq!(mismatch.expected, id);
        assert_eq!(mismatch.actual, ContentId::of(&bytes));
        assert!(error.to_string().contains(&path.display().to_string()));
        assert!(!path.exists(), "a corrupt file must be removed");
        assert!(matches!(store.get(&id), Err(StoreError::NotFound(i)) if i == id));
    }

    #[test]
    fn a_truncated_file_is_corrupt() {
        let (_dir, store) = store(1024);
        let id = store.put(&[1; 100]).unwrap();
        std::fs::write(store.path_of(&id), [1; 99]).unwrap();
        assert!(matches!(
            store.get(&id),
            Err(StoreError::Corrupt {
                reason: Corruption::Mismatch(_),
                ..
            })
        ));
        assert!(!store.contains(&id));
    }

    #[test]
    fn a_file_over_the_cap_is_not_read_and_is_removed() {
        let (_dir, store) = store(16);
        let id = ContentId::of(&[0; 17]);
        std::fs::write(store.path_of(&id), [0; 17]).unwrap();
        assert!(matches!(
            store.get(&id),
            Err(StoreError::Corrupt {
                reason: Corruption::OverCap { size: 17, max: 16 },
                ..
            })
        ));
        assert!(!store.contains(&id));
    }

    #[test]
    fn get_of_a_missing_component_is_not_found() {
        let (_dir, store) = store(1024);
        let id = ContentId::of(b"never stored");
        assert!(!store.contains(&id));
        assert!(matches!(store.get(&id), Err(StoreError::NotFound(i)) if i == id));
    }

    #[test]
    fn list_names_components_only_and_remove_removes() {
        let (_dir, store) = store(1024);
        let a = store.put(b"a").unwrap();
        let b = store.put(b"b").unwrap();
        std::fs::write(store.dir().join(".tmpXYZ"), b"half-written").unwrap();
        std::fs::write(store.dir().join("notes.txt"), b"not a component").unwrap();
        let mut expected = vec![a, b];
        expected.sort();
        assert_eq!(store.list().unwrap(), expected);

        assert!(store.remove(&a).unwrap());
        assert!(!store.remove(&a).unwrap());
        assert!(!store.contains(&a));
        assert_eq!(store.list().unwrap(), vec![b]);
    }

    #[test]
    fn reopening_finds_what_was_stored() {
        let (dir, store) = store(1024);
        let id = store.put(b"kept").unwrap();
        drop(store);
        let store = Store::open(dir.path().join("content"), 1024).unwrap();
        assert_eq!(store.list().unwrap(), vec![id]);
        assert_eq!(store.get(&id).unwrap(), b"kept");
    }

    #[tokio::test]
    async fn async_wrappers_run_off_the_runtime() {
        let (_dir, store) = store(1024);
        let id = store.put_async(b"async".to_vec()).await.unwrap();
        assert_eq!(store.get_async(id).await.unwrap(), b"async");
        assert!(matches!(
            store.put_async(vec![0; 2048]).await,
            Err(StoreError::TooLarge { .. })
        ));
    }
}
