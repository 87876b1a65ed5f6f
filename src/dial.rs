//! `ww dial`: a stream between local bytes (this terminal) and a remote cell.

use anyhow::Context as _;
use libp2p::{Multiaddr, StreamProtocol};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt as _};
use tokio_util::compat::FuturesAsyncReadCompatExt as _;

use crate::net::client::Client;
use crate::net::router::OpenStreamError;

/// Opens a stream to `protocol` on the node at `addr` (ending in `/p2p/<peer-id>`),
/// copies `input` to it and closes its write side at EOF, and copies the stream to
/// `output` until the node closes it.
///
/// Succeeds only if the node closed the stream cleanly. An unsupported protocol, an
/// unreachable or wrong peer, and a stream aborted by the node (a failed cell) are
/// errors with a one-line reason.
pub async fn dial<I, O>(addr: &Multiaddr, protocol: StreamProtocol, input: I, output: O) -> anyhow::Result<()>
where
    I: AsyncRead + Unpin,
    O: AsyncWrite + Unpin,
{
    let client = Client::new()?;
    let peer = client.connect(addr).await?;
    let stream = client.open(peer, protocol.clone()).await.map_err(|error| match error {
        OpenStreamError::UnsupportedProtocol(_) => {
            anyhow::anyhow!("{peer} does not serve {protocol}")
        }
        error => anyhow::Error::new(error).context(format!("cannot open {protocol} on {peer}")),
    })?;
    let (mut from_node, mut to_node) = tokio::io::split(stream.compat());
    let (mut input, mut output) = (input, output);

    let send = async {
        tokio::io::copy(&mut input, &mut to_node).await?;
        to_node.shutdown().await
    };
    let receive = async {
        tokio::io::copy(&mut from_node, &mut output).await?;
        output.flush().await
    };
    tokio::pin!(send, receive);
    let mut sending = true;
    loop {
        tokio::select! {
            sent = &mut send, if sending => {
                sending = false;
                // The node may stop reading early (and answer anyway): the outcome is
                // what the receiving side sees.
                if let Err(error) = sent {
                    tracing::debug!(%error, "sending to the node stopped");
                }
            }
            received = &mut receive => {
                return received.context("the stream was aborted by the node (the cell failed or the connection broke)");
            }
        }
    }
}
