//! The cells deployed to this node, kept in `data_dir/deployed.json` so a restarted
//! node serves them again without asking anyone: each deployment's protocol, its
//! component's CID (the bytes are in the content store) and what was granted.
//!
//! The file is replaced atomically (a temporary file renamed over it), so a crash
//! leaves the old list or the new one, never half of one. A file that cannot be read
//! stops the node with its path: nothing is served from a list ww cannot trust.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Mutex;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use crate::content::ContentId;
use crate::limits::LimitOverrides;
use crate::net::manage::DialRequest;

/// One deployed cell, as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Deployment {
    /// The protocol it serves.
    pub protocol: String,
    /// Its component.
    pub content: ContentId,
    /// The limits granted (only those the deployer asked for; the rest are the
    /// node's ceilings).
    #[serde(default)]
    pub limits: LimitOverrides,
    /// The dialing granted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dial: Option<DialRequest>,
    /// The peer that deployed it.
    pub deployer: String,
    /// When, in seconds since the Unix epoch.
    pub since_unix_s: u64,
}

/// The deployments on record, by protocol.
pub(super) struct Deployments {
    path: PathBuf,
    records: Mutex<BTreeMap<String, Deployment>>,
}

impl Deployments {
    /// Reads `data_dir/deployed.json` (none yet is an empty list).
    pub(super) fn open(data_dir: &std::path::Path) -> anyhow::Result<Self> {
        let path = data_dir.join("deployed.json");
        let records = match std::fs::read(&path) {
            Ok(bytes) => {
                let list: Vec<Deployment> = serde_json::from_slice(&bytes).with_context(|| {
                    format!(
                        "{} is not a list of deployments (move it away to start without the deployed cells)",
                        path.display()
                    )
                })?;
                list.into_iter()
                    .map(|deployment| (deployment.protocol.clone(), deployment))
                    .collect()
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(error) => {
                return Err(error).with_context(|| format!("cannot read {}", path.display()));
            }
        };
        Ok(Self {
            path,
            records: Mutex::new(records),
        })
    }

    /// Every deployment on record.
    pub(super) fn all(&self) -> Vec<Deployment> {
        self.lock().values().cloned().collect()
    }

    /// Records `deployment` (replacing any on its protocol) on disk before it
    /// returns.
    pub(super) fn record(&self, deployment: Deployment) -> anyhow::Result<()> {
        let mut records = self.lock();
        let mut next = records.clone();
        next.insert(deployment.protocol.clone(), deployment);
        self.write(&next)?;
        *records = next;
        Ok(())
    }

    /// Forgets the deployment on `protocol`, on disk before it returns.
    pub(super) fn forget(&self, protocol: &str) -> anyhow::Result<()> {
        let mut records = self.lock();
        let mut next = records.clone();
        if next.remove(protocol).is_some() {
            self.write(&next)?;
            *records = next;
        }
        Ok(())
    }

    fn write(&self, records: &BTreeMap<String, Deployment>) -> anyhow::Result<()> {
        let list: Vec<&Deployment> = records.values().collect();
        let dir = self.path.parent().unwrap_or(std::path::Path::new("."));
        let written = (|| {
            let mut file = tempfile::NamedTempFile::new_in(dir)?;
            file.write_all(&serde_json::to_vec_pretty(&list)?)?;
            file.as_file().sync_all()?;
            file.persist(&self.path)?;
            anyhow::Ok(())
        })();
        written.with_context(|| format!("cannot write {}", self.path.display()))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Deployment>> {
        self.records.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment(protocol: &str, bytes: &[u8]) -> Deployment {
        Deployment {
            protocol: protocol.into(),
            content: ContentId::of(bytes),
            limits: LimitOverrides {
                memory_mb: Some(16),
                ..LimitOverrides::default()
            },
            dial: Some(DialRequest::Any),
            deployer: "12D3KooWRBhwfeP2Y4TCx1SM6s9rUoHhR5STiGwxBhgFRcw3UERE".into(),
            since_unix_s: 1,
        }
    }

    #[test]
    fn deployments_survive_a_restart_and_forgetting_one_keeps_the_others() {
        let dir = tempfile::tempdir().unwrap();
        let deployed = Deployments::open(dir.path()).unwrap();
        assert!(deployed.all().is_empty());
        deployed.record(deployment("/a/1", b"a")).unwrap();
        deployed.record(deployment("/b/1", b"b")).unwrap();
        deployed.record(deployment("/a/1", b"a2")).unwrap();

        let reopened = Deployments::open(dir.path()).unwrap();
        assert_eq!(
            reopened.all(),
            [deployment("/a/1", b"a2"), deployment("/b/1", b"b")]
        );
        reopened.forget("/a/1").unwrap();
        reopened.forget("/never/1").unwrap();
        assert_eq!(
            Deployments::open(dir.path()).unwrap().all(),
            [deployment("/b/1", b"b")]
        );
    }

    #[test]
    fn a_damaged_list_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("deployed.json"), b"[{\"protocol\": 1").unwrap();
        let error = Deployments::open(dir.path()).err().unwrap();
        assert!(format!("{error:#}").contains("deployed.json"), "{error:#}");
    }
}
