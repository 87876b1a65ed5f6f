//! The set of served cells: what installing, replacing and removing a version tells
//! the router and the DHT announcements, and that a replaced version lives on while
//! a stream holds it.

use std::sync::Arc;

use libp2p::StreamProtocol;
use tokio_util::sync::CancellationToken;

use super::{Cells, Origin, ServedCell};
use crate::cell::Runtime;
use crate::config::CellSpec;
use crate::content::ContentId;
use crate::limits::Limits;
use crate::metrics::Metrics;
use crate::net::discovery::{content_key, provider_key};
use crate::net::router;
use crate::net::status::{call_variant, status_variant};

const FIXED: StreamProtocol = StreamProtocol::new("/test/fixed/1");
const CELL: StreamProtocol = StreamProtocol::new("/test/cell/1");

/// A version of a cell on [`CELL`]: the built-in `name`'s component.
fn version(runtime: &Arc<Runtime>, name: &str) -> ServedCell {
    let wasm = crate::cell::builtin::find(name).unwrap().wasm;
    let content = ContentId::of(wasm);
    let spec = CellSpec::content(CELL, content);
    let options = crate::cell::CellOptions {
        name: spec.name.clone(),
        limits: Limits::DEFAULT,
        mode: None,
        dial: spec.dial.clone(),
        network: None,
    };
    let cell = runtime.load(name, wasm, &options).unwrap();
    ServedCell::new(&spec, cell, content, Origin::Deployed, Limits::DEFAULT)
}

#[test]
fn installing_replacing_and_removing_a_cell_updates_the_router_and_the_announcements() {
    let metrics = Arc::new(Metrics::new());
    let runtime = Runtime::new(None, metrics.clone(), None).unwrap();
    let served = router::Protocols::default();
    let (cells, mut announced) = Cells::new(
        &Limits::DEFAULT,
        metrics.clone(),
        CancellationToken::new(),
        served.clone(),
        vec![FIXED],
    );
    assert_eq!(&served.get()[..], [FIXED]);

    let echo = ContentId::of(crate::cell::builtin::find("echo").unwrap().wasm);
    assert!(cells.install(version(&runtime, "echo")).is_none());
    let mut protocols = served.get().to_vec();
    protocols.sort_by(|a, b| a.as_ref().cmp(b.as_ref()));
    let mut expected = vec![FIXED, CELL, status_variant(&CELL), call_variant(&CELL)];
    expected.sort_by(|a, b| a.as_ref().cmp(b.as_ref()));
    assert_eq!(protocols, expected);
    assert!(announced.has_changed().unwrap());
    assert_eq!(
        *announced.borrow_and_update(),
        [provider_key(&CELL), content_key(&echo)]
    );
    assert!(metrics.encode().contains(&format!("content=\"{echo}\"")));

    // A stream holds version 1 while version 2 replaces it.
    let held = cells.get(CELL.as_ref()).unwrap();
    let sha = ContentId::of(crate::cell::builtin::find("sha256").unwrap().wasm);
    let replaced = cells.install(version(&runtime, "sha256")).unwrap();
    assert!(Arc::ptr_eq(&replaced, &held));
    assert_eq!(held.content, echo, "the held version is unchanged");
    assert_eq!(cells.get(CELL.as_ref()).unwrap().content, sha);
    assert_eq!(
        *announced.borrow_and_update(),
        [provider_key(&CELL), content_key(&sha)]
    );
    let encoded = metrics.encode();
    assert!(encoded.contains(&format!("content=\"{sha}\"")), "{encoded}");
    assert!(
        !encoded.contains(&format!("content=\"{echo}\"")),
        "{encoded}"
    );
    assert_eq!(cells.list().len(), 1);
    assert_eq!(cells.list()[0].live(), 0);

    let removed = cells.remove(CELL.as_ref()).unwrap();
    assert_eq!(removed.content, sha);
    assert_eq!(&served.get()[..], [FIXED]);
    assert!(announced.borrow_and_update().is_empty());
    assert!(cells.get(CELL.as_ref()).is_none());
    assert!(cells.remove(CELL.as_ref()).is_none());
}
