//! The `+call` header: what is left of a chain of calls (hops and deadline), sent
//! by a cell that dials ahead of its request (see the wire format in [`super`]).

use std::io;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

/// What is left of a chain of calls, sent ahead of a `P+call` request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallHeader {
    /// Dials the remote instance may still make along the chain.
    pub hops: u8,
    /// The caller's remaining wall-clock time; `None` if it has no limit.
    pub deadline: Option<Duration>,
}

impl CallHeader {
    /// Length of the header on the wire.
    pub const LEN: usize = 5;
    /// `deadline` value for "none".
    const NO_DEADLINE: u32 = u32::MAX;

    /// The header's bytes. A deadline beyond the wire's range (49 days) is sent as
    /// the longest one it can carry.
    pub fn encode(&self) -> [u8; Self::LEN] {
        let deadline = match self.deadline {
            None => Self::NO_DEADLINE,
            Some(left) => u32::try_from(left.as_millis())
                .unwrap_or(u32::MAX)
                .min(Self::NO_DEADLINE - 1),
        };
        let mut bytes = [0; Self::LEN];
        bytes[0] = self.hops;
        bytes[1..].copy_from_slice(&deadline.to_be_bytes());
        bytes
    }

    /// A header from its bytes (every value is valid).
    pub fn decode(bytes: [u8; Self::LEN]) -> Self {
        let deadline = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]);
        Self {
            hops: bytes[0],
            deadline: (deadline != Self::NO_DEADLINE)
                .then(|| Duration::from_millis(deadline.into())),
        }
    }

    /// Reads a header off the start of a request.
    pub async fn read<R: AsyncRead + Unpin>(reader: &mut R) -> io::Result<Self> {
        let mut bytes = [0; Self::LEN];
        reader.read_exact(&mut bytes).await?;
        Ok(Self::decode(bytes))
    }

    /// Sends the header at the start of a request, and flushes it.
    pub async fn write<W: AsyncWrite + Unpin>(&self, writer: &mut W) -> io::Result<()> {
        writer.write_all(&self.encode()).await?;
        writer.flush().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn call_headers_round_trip() {
        let headers = [
            CallHeader {
                hops: 7,
                deadline: None,
            },
            CallHeader {
                hops: 0,
                deadline: Some(Duration::from_millis(1500)),
            },
            CallHeader {
                hops: 255,
                deadline: Some(Duration::ZERO),
            },
        ];
        for header in headers {
            let mut wire = Vec::new();
            header.write(&mut wire).await.unwrap();
            wire.extend_from_slice(b"request");
            let mut reader = &wire[..];
            assert_eq!(CallHeader::read(&mut reader).await.unwrap(), header);
            assert_eq!(
                reader,
                b"request",
                "the header is exactly {} bytes",
                CallHeader::LEN
            );
        }
        assert_eq!(
            CallHeader {
                hops: 1,
                deadline: None
            }
            .encode(),
            [1, 0xff, 0xff, 0xff, 0xff]
        );
        // A deadline too long for the wire stays a deadline, not "none".
        let long = CallHeader {
            hops: 1,
            deadline: Some(Duration::from_secs(u64::MAX / 4)),
        };
        let decoded = CallHeader::decode(long.encode());
        assert_eq!(
            decoded.deadline,
            Some(Duration::from_millis(u64::from(u32::MAX - 1)))
        );
        // A request cut inside its header is an error.
        assert!(CallHeader::read(&mut &[3u8, 0, 0][..]).await.is_err());
    }
}
