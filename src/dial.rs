//! `ww dial`: a stream between local bytes (this terminal) and a remote cell.

use anyhow::{Context as _, bail};
use libp2p::{Multiaddr, StreamProtocol};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt as _};
use tokio_util::compat::FuturesAsyncReadCompatExt as _;

use crate::net::client::Client;
use crate::net::outcome::{self, Outcome};
use crate::net::router::OpenStreamError;

/// Opens a stream to `protocol` on the node at `addr` (ending in `/p2p/<peer-id>`),
/// copies `input` to it and closes its write side at EOF, and copies the answer to
/// `output` until the node closes the stream.
///
/// The status variant `protocol+status` is asked for first, so a failed cell is
/// reported even when the transport cannot show it (see [`outcome`]); a peer that
/// only speaks `protocol` is served plainly. Errors are one line: an unsupported
/// protocol, an unreachable or wrong peer, a failed cell, a broken stream.
pub async fn dial<I, O>(
    addr: &Multiaddr,
    protocol: StreamProtocol,
    input: I,
    output: O,
) -> anyhow::Result<()>
where
    I: AsyncRead + Unpin,
    O: AsyncWrite + Unpin,
{
    let client = Client::new()?;
    let peer = client.connect(addr).await?;
    let offer = vec![outcome::status_variant(&protocol), protocol.clone()];
    let (stream, chosen) = client
        .open_first(peer, offer)
        .await
        .map_err(|error| match error {
            OpenStreamError::UnsupportedProtocol(_) => {
                anyhow::anyhow!("{peer} does not serve {protocol}")
            }
            error => anyhow::Error::new(error).context(format!("cannot open {protocol} on {peer}")),
        })?;
    let (_, framed) = outcome::parse(&chosen);
    let (mut from_node, mut to_node) = tokio::io::split(stream.compat());
    let (mut input, mut output) = (input, output);

    let send = async {
        tokio::io::copy(&mut input, &mut to_node).await?;
        to_node.shutdown().await
    };
    let receive = async {
        let outcome = if framed {
            outcome::read_answer(&mut from_node, &mut output).await?
        } else {
            tokio::io::copy(&mut from_node, &mut output).await?;
            Outcome::Success
        };
        output.flush().await?;
        Ok::<_, std::io::Error>(outcome)
    };
    tokio::pin!(send, receive);
    let mut sending = true;
    let received = loop {
        tokio::select! {
            sent = &mut send, if sending => {
                sending = false;
                // The node may stop reading early (and answer anyway): the outcome is
                // what the receiving side sees.
                if let Err(error) = sent {
                    tracing::debug!(%error, "sending to the node stopped");
                }
            }
            received = &mut receive => break received,
        }
    };
    match received.context("the stream broke")? {
        Outcome::Success => Ok(()),
        Outcome::Failure(reason) => bail!("{protocol} on {peer} failed: {reason}"),
    }
}
