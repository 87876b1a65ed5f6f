//! The node's persistent ed25519 identity (its peer ID), kept in a file.
//!
//! The file holds the keypair in libp2p's protobuf encoding, the format other
//! libp2p implementations read too. It is created with mode 0600 on first use.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use libp2p::identity::Keypair;

/// Where the identity lives unless `--identity` or the config says otherwise:
/// `$XDG_DATA_HOME/ww/identity.key` (usually `~/.local/share/ww/identity.key`).
pub fn default_path() -> anyhow::Result<PathBuf> {
    let data = dirs::data_dir().context("no data directory for this user; pass --identity")?;
    Ok(data.join("ww").join("identity.key"))
}

/// Reads the keypair at `path`, or creates a new ed25519 one there if the file
/// does not exist.
pub fn load_or_create(path: &Path) -> anyhow::Result<Keypair> {
    match std::fs::read(path) {
        Ok(bytes) => {
            warn_if_readable_by_others(path);
            Keypair::from_protobuf_encoding(&bytes).with_context(|| {
                format!(
                    "{}: not a libp2p private key (protobuf-encoded keypair)",
                    path.display()
                )
            })
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => create(path),
        Err(error) => {
            Err(error).with_context(|| format!("cannot read identity file {}", path.display()))
        }
    }
}

fn create(path: &Path) -> anyhow::Result<Keypair> {
    let keypair = Keypair::generate_ed25519();
    let bytes = keypair
        .to_protobuf_encoding()
        .context("encoding the new identity")?;
    if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create directory {}", dir.display()))?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(path)
        .with_context(|| format!("cannot create identity file {}", path.display()))?;
    file.write_all(&bytes)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write identity file {}", path.display()))?;
    tracing::info!(path = %path.display(), peer = %keypair.public().to_peer_id(), "created a new identity");
    Ok(keypair)
}

#[cfg(unix)]
fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path)
        && meta.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(path = %path.display(), "identity file is readable by other users; chmod 600 it");
    }
}

#[cfg(not(unix))]
fn warn_if_readable_by_others(_: &Path) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_file_same_peer_id() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("id.key");
        let first = load_or_create(&path).unwrap();
        let second = load_or_create(&path).unwrap();
        assert_eq!(first.public().to_peer_id(), second.public().to_peer_id());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn garbage_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("id.key");
        std::fs::write(&path, b"not a key").unwrap();
        let error = format!("{:#}", load_or_create(&path).unwrap_err());
        assert!(error.contains("not a libp2p private key"), "{error}");
    }
}
