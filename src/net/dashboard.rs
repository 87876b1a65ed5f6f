//! `/ww/dashboard/1.0.0`: where a node's dashboard (its admin endpoint) listens, as the
//! node itself says it — so another node's dashboard can link to it.
//!
//! # Wire
//! ```text
//! asker → node   nothing
//! node → asker   IP:PORT in UTF-8 (a Rust `SocketAddr`, `[v6]:port` for IPv6), at most
//!                MAX_ANSWER bytes, end
//! ```
//! Only a node with an admin endpoint serves the protocol, so identify tells who has
//! one. The answer comes over a connection to the node, so it is the node's own word
//! (no third party can speak for it); the asker still trusts no more than a socket
//! address: [`read_address`] refuses anything longer than [`MAX_ANSWER`] or not an
//! address, and the asker builds the `http://` URL itself (see
//! `node::dashboards`). The address may be unspecified (`0.0.0.0`): the asker then
//! puts in the IP it reaches the node at.

use std::io;
use std::net::SocketAddr;

use futures::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use libp2p::StreamProtocol;

/// The protocol a node tells its admin endpoint's address on.
pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/ww/dashboard/1.0.0");
/// The longest answer a reader accepts, in bytes (`[v6%scope]:port` fits).
pub const MAX_ANSWER: usize = 64;

/// Why a node's answer was not an address.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AnswerError {
    /// More than [`MAX_ANSWER`] bytes.
    #[error("an answer over {MAX_ANSWER} bytes")]
    TooLong,
    /// Not UTF-8, or not `IP:PORT`.
    #[error("not a socket address: {0:?}")]
    NotAnAddress(String),
    /// The stream failed.
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Sends `address` and closes the stream.
pub async fn send_address<S>(stream: &mut S, address: SocketAddr) -> io::Result<()>
where
    S: AsyncWrite + Unpin,
{
    stream.write_all(address.to_string().as_bytes()).await?;
    stream.close().await
}

/// Reads a node's answer to the end of the stream: its admin endpoint's address.
/// Never buffers more than [`MAX_ANSWER`] + 1 bytes. No deadline of its own: wrap it
/// in `tokio::time::timeout`.
pub async fn read_address<S>(stream: &mut S) -> Result<SocketAddr, AnswerError>
where
    S: AsyncRead + Unpin,
{
    let mut answer = Vec::with_capacity(MAX_ANSWER + 1);
    stream
        .take(MAX_ANSWER as u64 + 1)
        .read_to_end(&mut answer)
        .await?;
    if answer.len() > MAX_ANSWER {
        return Err(AnswerError::TooLong);
    }
    let text = String::from_utf8_lossy(&answer);
    text.parse()
        .map_err(|_| AnswerError::NotAnAddress(text.into_owned()))
}

#[cfg(test)]
mod tests {
    use futures::io::Cursor;

    use super::*;

    async fn read(bytes: &[u8]) -> Result<SocketAddr, AnswerError> {
        read_address(&mut Cursor::new(bytes.to_vec())).await
    }

    #[tokio::test]
    async fn an_address_goes_through_and_nothing_else_does() {
        let mut sent = Cursor::new(Vec::new());
        let v6: SocketAddr = "[::1]:2026".parse().unwrap();
        send_address(&mut sent, v6).await.unwrap();
        assert_eq!(read(&sent.into_inner()).await.unwrap(), v6);
        assert_eq!(
            read(b"127.0.0.1:8080").await.unwrap(),
            "127.0.0.1:8080".parse().unwrap()
        );
        for bad in [
            &b""[..],
            b"127.0.0.1",
            b"http://127.0.0.1:8080/",
            b"<script>alert(1)</script>",
            b"127.0.0.1:8080\n",
            b"\xff\xfe",
        ] {
            assert!(
                matches!(read(bad).await, Err(AnswerError::NotAnAddress(_))),
                "{bad:?}"
            );
        }
        let long = vec![b'1'; MAX_ANSWER + 1];
        assert!(matches!(read(&long).await, Err(AnswerError::TooLong)));
    }
}
