//! Hot swap: a new version of a cell takes the streams that arrive after it, while
//! the streams in flight finish on the old one. Here through SIGHUP (the config read
//! again); `deploy.rs` swaps through `ww deploy`.

use std::path::Path;

use libp2p::{PeerId, StreamProtocol};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_util::compat::FuturesAsyncReadCompatExt as _;
use ww::net::client::Client;

use crate::support::{Node, pattern, test_cell};

const VERSIONED: StreamProtocol = StreamProtocol::new("/test/versioned/1");

/// A stream to a `version-N` cell, past its `vN` line.
pub struct Versioned {
    /// The version that answered.
    pub version: String,
    reader: tokio::io::ReadHalf<tokio_util::compat::Compat<libp2p::Stream>>,
    writer: tokio::io::WriteHalf<tokio_util::compat::Compat<libp2p::Stream>>,
}

impl Versioned {
    /// Opens a stream and reads which version answers.
    pub async fn open(client: &Client, peer: PeerId, protocol: StreamProtocol) -> Self {
        let stream = client.open(peer, protocol).await.unwrap();
        let (mut reader, writer) = tokio::io::split(stream.compat());
        let mut line = Vec::new();
        loop {
            let byte = reader.read_u8().await.expect("the cell's version line");
            if byte == b'\n' {
                break;
            }
            line.push(byte);
        }
        let version = String::from_utf8(line).unwrap();
        Self {
            version,
            reader,
            writer,
        }
    }

    /// Sends `data`, closes the write side and checks that the echo is exact and the
    /// stream ends cleanly.
    pub async fn finish(mut self, data: &[u8]) {
        self.writer.write_all(data).await.unwrap();
        self.writer.shutdown().await.unwrap();
        let mut echo = Vec::new();
        self.reader.read_to_end(&mut echo).await.unwrap();
        assert!(echo == data, "the {} stream echoed exactly", self.version);
    }
}

/// Replaces `path` with `from`'s bytes in one step, as an editor or a deploy script
/// would (a rename, so the node never reads half a file).
fn replace_file(path: &Path, bytes: &[u8]) {
    let next = path.with_extension("next");
    std::fs::write(&next, bytes).unwrap();
    std::fs::rename(&next, path).unwrap();
}

/// A node serving `file`, a copy of `version-1`, on [`VERSIONED`], and a client
/// connected to it.
async fn serving_version_1(file: &Path) -> (Node, Client) {
    replace_file(file, &std::fs::read(test_cell("version-1")).unwrap());
    let flag = format!("{VERSIONED}={}", file.display());
    let node = Node::start(&["--cell", &flag]).await;
    let client = Client::new().unwrap();
    client.connect(&node.tcp).await.unwrap();
    (node, client)
}

fn hang_up(node: &Node) {
    let pid = node.child.id().unwrap().to_string();
    let status = std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap();
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sighup_swaps_a_changed_file_and_streams_in_flight_finish_on_the_old_version() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cell.wasm");
    let (node, client) = serving_version_1(&file).await;

    let mut in_flight = Vec::new();
    for _ in 0..20 {
        in_flight.push(Versioned::open(&client, node.peer, VERSIONED).await);
    }
    assert!(in_flight.iter().all(|stream| stream.version == "v1"));

    replace_file(&file, &std::fs::read(test_cell("version-2")).unwrap());
    hang_up(&node);
    let swapped = node.wait_logged("cell swapped").await;
    assert!(swapped.contains("in_flight=20"), "{swapped}");

    let after = Versioned::open(&client, node.peer, VERSIONED).await;
    assert_eq!(
        after.version, "v2",
        "a stream after the swap gets version 2"
    );
    after.finish(b"new").await;
    for (i, stream) in in_flight.into_iter().enumerate() {
        assert_eq!(stream.version, "v1");
        stream.finish(&pattern(10_000, i as u64)).await;
    }
    // Once its last stream is done, version 1 is freed.
    let v1 = ww::content::ContentId::of(&std::fs::read(test_cell("version-1")).unwrap());
    let freed = node.wait_logged("cell version freed").await;
    assert!(freed.contains(&v1.to_string()), "{freed}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sighup_with_a_broken_file_keeps_the_old_version() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cell.wasm");
    let (node, client) = serving_version_1(&file).await;

    replace_file(&file, b"\0asm\x0d\0\x01\0 not really a component");
    hang_up(&node);
    let refused = node.wait_logged("cell not reloaded").await;
    assert!(refused.contains("invalid component"), "{refused}");
    let stream = Versioned::open(&client, node.peer, VERSIONED).await;
    assert_eq!(stream.version, "v1", "the old version serves on");
    stream.finish(b"still here").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sighup_adds_and_removes_the_cells_the_config_file_names() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("ww.toml");
    let v1 = test_cell("version-1");
    let table = |name: &str, protocol: &str| {
        format!(
            "[cells.{name}]\nprotocol = \"{protocol}\"\nwasm = \"{}\"\n",
            v1.display()
        )
    };
    std::fs::write(&config, table("first", "/test/first/1")).unwrap();
    let node = Node::start(&["--config", config.to_str().unwrap()]).await;
    let client = Client::new().unwrap();
    client.connect(&node.tcp).await.unwrap();
    Versioned::open(&client, node.peer, StreamProtocol::new("/test/first/1"))
        .await
        .finish(b"1")
        .await;

    std::fs::write(&config, table("second", "/test/second/1")).unwrap();
    hang_up(&node);
    let reloaded = node.wait_logged("configuration reloaded").await;
    assert!(
        reloaded.contains("added=1") && reloaded.contains("removed=1"),
        "{reloaded}"
    );
    Versioned::open(&client, node.peer, StreamProtocol::new("/test/second/1"))
        .await
        .finish(b"2")
        .await;
    let gone = client
        .open(node.peer, StreamProtocol::new("/test/first/1"))
        .await;
    assert!(
        gone.is_err(),
        "a removed cell's protocol is no longer served"
    );
}
