//! The manage wire over in-memory pipes: round trips, and every way a deployer's
//! bytes can be wrong.

use std::time::Duration;

use futures::AsyncWriteExt as _;
use tokio_util::compat::{Compat, TokioAsyncReadCompatExt as _};

use super::*;
use crate::cell::DialGrant;
use crate::content::ContentId;
use crate::limits::{LimitOverrides, Limits};

type Pipe = Compat<tokio::io::DuplexStream>;

/// A hang guard, not a timing assert: every test finishes in milliseconds.
const GUARD: Duration = Duration::from_secs(30);

/// A component spanning several frames, with a short last one.
fn component() -> Vec<u8> {
    (0..3 * MAX_FRAME + 1000)
        .map(|i| (i * 7 % 251) as u8)
        .collect()
}

fn pipe() -> (Pipe, Pipe) {
    let (near, far) = tokio::io::duplex(16 << 10);
    (near.compat(), far.compat())
}

/// `payload` as one frame.
fn frame(payload: &[u8]) -> Vec<u8> {
    let mut length = unsigned_varint::encode::usize_buffer();
    [
        unsigned_varint::encode::usize(payload.len(), &mut length),
        payload,
    ]
    .concat()
}

fn protocol() -> StreamProtocol {
    StreamProtocol::new("/test/deployed/1")
}

/// The node's side of a pipe whose deployer writes `raw` and then closes its write
/// half if `then_close` (else stays open, silent).
async fn read_raw(
    raw: Vec<u8>,
    then_close: bool,
    max_size: u64,
) -> Result<(DeployRequest, Option<Vec<u8>>), ManageError> {
    let (mut near, mut far) = pipe();
    let writer = tokio::spawn(async move {
        let _ = near.write_all(&raw).await;
        if then_close {
            let _ = near.close().await;
        }
        // Keep the pipe open until the reader is done.
        std::future::pending::<()>().await;
    });
    let result = tokio::time::timeout(GUARD, read_request(&mut far, max_size))
        .await
        .expect("read_request hung");
    writer.abort();
    result
}

/// The request frame of a deploy of `bytes` (announced honestly).
fn deploy_frame(bytes: &[u8]) -> Vec<u8> {
    let request = DeployRequest::deploy(&protocol(), bytes, LimitOverrides::default(), None);
    frame(&serde_json::to_vec(&request).unwrap())
}

#[tokio::test]
async fn a_deploy_round_trips() {
    let bytes = component();
    let limits = LimitOverrides {
        memory_mb: Some(128),
        cpu_ms: Some(500),
        ..Default::default()
    };
    let request = DeployRequest::deploy(&protocol(), &bytes, limits, Some(DialRequest::Any));
    let granted = Limits {
        memory_mb: 128,
        ..Limits::DEFAULT
    };
    let answer = DeployAnswer::Deployed {
        protocol: protocol().to_string(),
        content: ContentId::of(&bytes),
        granted,
        dial: Some(DialRequest::Only(vec!["/other/1".into()])),
        replaced: Some(ContentId::of(b"v1")),
    };

    let (mut near, mut far) = pipe();
    let deployer = {
        let (request, bytes) = (request.clone(), bytes.clone());
        tokio::spawn(async move {
            send_request(&mut near, &request, Some(&bytes))
                .await
                .unwrap();
            read_answer(&mut near).await.unwrap()
        })
    };
    let (got, component) = read_request(&mut far, 1 << 20).await.unwrap();
    assert_eq!(got, request);
    assert_eq!(component.as_deref(), Some(&bytes[..]));
    send_answer(&mut far, &answer).await.unwrap();
    assert_eq!(
        tokio::time::timeout(GUARD, deployer)
            .await
            .unwrap()
            .unwrap(),
        answer
    );
}

#[tokio::test]
async fn an_undeploy_round_trips() {
    let request = DeployRequest::undeploy(&protocol());
    let answer = DeployAnswer::Undeployed {
        protocol: protocol().to_string(),
        content: ContentId::of(b"v1"),
    };
    let (mut near, mut far) = pipe();
    let deployer = {
        let request = request.clone();
        tokio::spawn(async move {
            send_request(&mut near, &request, None).await.unwrap();
            read_answer(&mut near).await.unwrap()
        })
    };
    assert_eq!(read_request(&mut far, 0).await.unwrap(), (request, None));
    send_answer(&mut far, &answer).await.unwrap();
    assert_eq!(
        tokio::time::timeout(GUARD, deployer)
            .await
            .unwrap()
            .unwrap(),
        answer
    );
}

#[test]
fn the_json_is_as_documented_and_carries_only_what_is_set() {
    let request = DeployRequest::deploy(
        &protocol(),
        b"",
        LimitOverrides {
            memory_mb: Some(256),
            ..Default::default()
        },
        Some(DialRequest::Only(vec!["/a/1".into()])),
    );
    let json = serde_json::to_string(&request).unwrap();
    assert_eq!(
        json,
        format!(
            r#"{{"op":"deploy","protocol":"/test/deployed/1","content":"{}","size":0,"limits":{{"memory_mb":256}},"dial":{{"only":["/a/1"]}}}}"#,
            ContentId::of(b"")
        )
    );
    // `memory_mb`'s own deserializer reads back what was written, and a size string.
    assert_eq!(
        serde_json::from_str::<DeployRequest>(&json).unwrap(),
        request
    );
    let text = json.replace("256", "\"256MiB\"");
    assert_eq!(
        serde_json::from_str::<DeployRequest>(&text).unwrap(),
        request
    );

    let undeploy = serde_json::to_string(&DeployRequest::undeploy(&protocol())).unwrap();
    assert_eq!(
        undeploy,
        r#"{"op":"undeploy","protocol":"/test/deployed/1","size":0,"limits":{}}"#
    );
    let refused = DeployAnswer::Refused {
        reason: "no".into(),
    };
    assert_eq!(
        serde_json::to_string(&refused).unwrap(),
        r#"{"answer":"refused","reason":"no"}"#
    );
    let minimal = r#"{"op":"undeploy","protocol":"/p/1"}"#;
    let parsed: DeployRequest = serde_json::from_str(minimal).unwrap();
    assert_eq!(parsed.size, 0, "defaults fill what is left out");
}

#[tokio::test]
async fn an_announced_size_over_the_cap_is_refused_before_any_byte() {
    // Announces 1 TiB, sends nothing and keeps the stream open.
    let mut request = DeployRequest::deploy(&protocol(), b"x", LimitOverrides::default(), None);
    request.size = 1 << 40;
    let raw = frame(&serde_json::to_vec(&request).unwrap());
    let error = read_raw(raw, false, 1 << 20).await.unwrap_err();
    assert!(
        matches!(error, ManageError::TooLarge { announced, max } if announced == 1 << 40 && max == 1 << 20),
        "{error}"
    );
    assert_eq!(
        error.to_string(),
        "the component is 1099511627776 bytes, over this node's cap of 1048576"
    );
}

#[tokio::test]
async fn fewer_bytes_than_announced_are_truncated() {
    let bytes = component();
    // Ends between frames.
    let raw = [deploy_frame(&bytes), frame(&bytes[..MAX_FRAME])].concat();
    let error = read_raw(raw, true, 1 << 20).await.unwrap_err();
    assert!(
        matches!(error, ManageError::Truncated { received, .. } if received == MAX_FRAME as u64),
        "{error}"
    );
    // Ends inside a frame.
    let mut raw = [deploy_frame(&bytes), frame(&bytes[..1000])].concat();
    raw.truncate(raw.len() - 10);
    let error = read_raw(raw, true, 1 << 20).await.unwrap_err();
    assert!(
        matches!(error, ManageError::Truncated { received: 0, .. }),
        "{error}"
    );
}

#[tokio::test]
async fn more_bytes_than_announced_are_refused() {
    // A chunk that overshoots.
    let raw = [deploy_frame(b"abcd"), frame(b"abcdef")].concat();
    let error = read_raw(raw, true, 1 << 20).await.unwrap_err();
    assert!(
        matches!(error, ManageError::Oversent { announced: 4 }),
        "{error}"
    );
    // The exact bytes, then another frame.
    let raw = [deploy_frame(b"abcd"), frame(b"abcd"), frame(b"more")].concat();
    let error = read_raw(raw, true, 1 << 20).await.unwrap_err();
    assert!(
        matches!(error, ManageError::Oversent { announced: 4 }),
        "{error}"
    );
    // An undeploy followed by bytes.
    let undeploy = serde_json::to_vec(&DeployRequest::undeploy(&protocol())).unwrap();
    let raw = [frame(&undeploy), frame(b"x")].concat();
    let error = read_raw(raw, true, 1 << 20).await.unwrap_err();
    assert!(
        matches!(error, ManageError::Oversent { announced: 0 }),
        "{error}"
    );
}

#[tokio::test]
async fn bytes_that_do_not_hash_to_the_cid_are_a_mismatch() {
    let bytes = component();
    let mut lie = bytes.clone();
    lie[MAX_FRAME + 5] ^= 1;
    let mut raw = deploy_frame(&bytes);
    for chunk in lie.chunks(MAX_FRAME) {
        raw.extend(frame(chunk));
    }
    let error = read_raw(raw, true, 1 << 20).await.unwrap_err();
    let ManageError::Mismatch(mismatch) = error else {
        panic!("expected a mismatch, got {error}");
    };
    assert_eq!(mismatch.expected, ContentId::of(&bytes));
    assert_eq!(mismatch.actual, ContentId::of(&lie));
}

#[tokio::test]
async fn garbage_requests_are_refused_by_kind() {
    let error = read_raw(frame(b"{not json"), true, 1 << 20)
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            ManageError::BadJson {
                what: "request",
                ..
            }
        ),
        "{error}"
    );
    let unknown_op = br#"{"op":"explode","protocol":"/p/1"}"#;
    let error = read_raw(frame(unknown_op), true, 1 << 20)
        .await
        .unwrap_err();
    assert!(matches!(error, ManageError::BadJson { .. }), "{error}");
    let unknown_limit = br#"{"op":"undeploy","protocol":"/p/1","limits":{"cpu":1}}"#;
    let error = read_raw(frame(unknown_limit), true, 1 << 20)
        .await
        .unwrap_err();
    assert!(matches!(error, ManageError::BadJson { .. }), "{error}");

    let no_cid = br#"{"op":"deploy","protocol":"/p/1","size":1}"#;
    let error = read_raw(frame(no_cid), true, 1 << 20).await.unwrap_err();
    assert!(matches!(error, ManageError::Malformed(_)), "{error}");
    let heavy_undeploy = br#"{"op":"undeploy","protocol":"/p/1","size":1}"#;
    let error = read_raw(frame(heavy_undeploy), true, 1 << 20)
        .await
        .unwrap_err();
    assert!(matches!(error, ManageError::Malformed(_)), "{error}");
    let empty_chunk = [deploy_frame(b"ab"), frame(b"")].concat();
    let error = read_raw(empty_chunk, true, 1 << 20).await.unwrap_err();
    assert!(matches!(error, ManageError::Malformed(_)), "{error}");

    let error = read_raw(Vec::new(), true, 1 << 20).await.unwrap_err();
    assert!(matches!(error, ManageError::Ended("request")), "{error}");
}

#[tokio::test]
async fn a_frame_over_64_kib_is_refused() {
    let error = read_raw(frame(&[b' '; MAX_FRAME + 1]), true, 1 << 20)
        .await
        .unwrap_err();
    assert!(matches!(error, ManageError::FrameTooLong), "{error}");
    let bytes = vec![1; MAX_FRAME + 1];
    let raw = [deploy_frame(&bytes), frame(&bytes)].concat();
    let error = read_raw(raw, true, 1 << 20).await.unwrap_err();
    assert!(matches!(error, ManageError::FrameTooLong), "{error}");
}

#[tokio::test]
async fn a_garbage_or_missing_answer_is_an_error() {
    for (raw, ended) in [(frame(b"[1,2]"), false), (Vec::new(), true)] {
        let (mut near, mut far) = pipe();
        far.write_all(&raw).await.unwrap();
        far.close().await.unwrap();
        let error = read_answer(&mut near).await.unwrap_err();
        match ended {
            true => assert!(matches!(error, ManageError::Ended("answer")), "{error}"),
            false => assert!(matches!(error, ManageError::BadJson { .. }), "{error}"),
        }
    }
}

#[tokio::test]
async fn a_refusal_too_long_for_a_frame_is_cut() {
    let reason = "é".repeat(MAX_FRAME);
    let (mut near, mut far) = pipe();
    let sender =
        tokio::spawn(async move { send_answer(&mut far, &DeployAnswer::Refused { reason }).await });
    let answer = read_answer(&mut near).await.unwrap();
    sender.await.unwrap().unwrap();
    let DeployAnswer::Refused { reason } = answer else {
        panic!("expected a refusal, got {answer:?}");
    };
    assert!(
        reason.starts_with("éé") && reason.ends_with("… (cut)"),
        "{}",
        &reason[..20]
    );
}

#[tokio::test]
async fn a_listing_round_trips_across_frames() {
    // Enough cells to span several frames.
    let cells: Vec<CellListing> = (0..2000u64)
        .map(|i| CellListing {
            protocol: format!("/test/cell-{i}/1"),
            content: ContentId::of(&i.to_le_bytes()),
            kind: "connection".into(),
            source: "deployed".into(),
            live: i,
            since_unix_s: 1_700_000_000 + i,
        })
        .collect();
    assert!(serde_json::to_vec(&cells).unwrap().len() > 2 * MAX_FRAME);
    let (mut near, mut far) = pipe();
    let sender = {
        let cells = cells.clone();
        tokio::spawn(async move { send_listing(&mut far, &cells).await })
    };
    assert_eq!(read_listing(&mut near).await.unwrap(), cells);
    sender.await.unwrap().unwrap();

    let (mut near, mut far) = pipe();
    let sender = tokio::spawn(async move { send_listing(&mut far, &[]).await });
    assert_eq!(read_listing(&mut near).await.unwrap(), []);
    sender.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_listing_over_the_cap_is_refused() {
    let (mut near, mut far) = pipe();
    let writer = tokio::spawn(async move {
        // Frames of spaces until the reader hangs up.
        while far.write_all(&frame(&[b' '; MAX_FRAME])).await.is_ok() {}
    });
    let error = tokio::time::timeout(GUARD, read_listing(&mut near))
        .await
        .unwrap()
        .unwrap_err();
    assert!(matches!(error, ManageError::ListingTooLarge), "{error}");
    drop(near);
    writer.await.unwrap();
}

#[test]
fn dial_requests_map_to_grants_and_back() {
    let only = DialRequest::Only(vec!["/a/1".into(), "/b/1".into()]);
    let grant = only.to_grant().unwrap();
    assert_eq!(
        grant,
        DialGrant::Only(vec![
            StreamProtocol::new("/a/1"),
            StreamProtocol::new("/b/1")
        ])
    );
    assert_eq!(DialRequest::from_grant(&grant), Some(only.clone()));
    assert_eq!(DialRequest::Any.to_grant().unwrap(), DialGrant::Any);
    assert_eq!(DialRequest::from_grant(&DialGrant::Denied), None);
    let bad = DialRequest::Only(vec!["nope".into()])
        .to_grant()
        .unwrap_err();
    assert!(bad.contains("`nope`"), "{bad}");
    assert_eq!(only.to_string(), "/a/1 /b/1");
}

#[tokio::test]
async fn send_answer_leaves_the_stream_for_the_caller_to_drop() {
    // Closing would keep a yamux stream from being reset on drop, and a deployer
    // still sending would wait on flow control until the connection closed.
    let (mut near, mut far) = pipe();
    let refused = DeployAnswer::Refused {
        reason: "no".into(),
    };
    send_answer(&mut far, &refused).await.unwrap();
    far.write_all(b"still open").await.unwrap();
    assert_eq!(read_answer(&mut near).await.unwrap(), refused);
}
