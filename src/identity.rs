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
/// does not exist. Like ssh with a private key, refuses a file that other users may
/// read or write.
pub fn load_or_create(path: &Path) -> anyhow::Result<Keypair> {
    match std::fs::read(path) {
        Ok(bytes) => {
            check_private(path)?;
            if bytes.is_empty() {
                anyhow::bail!(
                    "identity file {} is empty: restore the key, or delete the file to \
                     start with a new peer ID",
                    path.display()
                );
            }
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

/// Refuses a key file that users other than its owner may read or write.
#[cfg(unix)]
fn check_private(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)
        .with_context(|| format!("cannot read identity file {}", path.display()))?
        .permissions()
        .mode();
    anyhow::ensure!(
        mode & 0o077 == 0,
        "identity file {} is accessible by other users (mode {:04o}): a private key must \
         be the owner's alone; `chmod 600 {}`",
        path.display(),
        mode & 0o7777,
        path.display()
    );
    Ok(())
}

#[cfg(not(unix))]
fn check_private(_: &Path) -> anyhow::Result<()> {
    Ok(())
}

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

    /// Writes `bytes` to a new owner-only file.
    fn private_file(path: &Path, bytes: &[u8]) {
        std::fs::write(path, bytes).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
    }

    #[test]
    fn garbage_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("id.key");
        private_file(&path, b"not a key");
        let error = format!("{:#}", load_or_create(&path).unwrap_err());
        assert!(error.contains("not a libp2p private key"), "{error}");
    }

    #[test]
    fn an_empty_file_is_named_as_empty() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("id.key");
        private_file(&path, b"");
        let error = format!("{:#}", load_or_create(&path).unwrap_err());
        assert!(error.contains("id.key is empty"), "{error}");
        assert!(!error.contains("rsa"), "{error}");
    }

    #[cfg(unix)]
    #[test]
    fn a_key_others_can_read_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("id.key");
        let created = load_or_create(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let error = format!("{:#}", load_or_create(&path).unwrap_err());
        assert!(
            error.contains("accessible by other users (mode 0644)"),
            "{error}"
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let again = load_or_create(&path).unwrap();
        assert_eq!(again.public(), created.public());
    }
}
