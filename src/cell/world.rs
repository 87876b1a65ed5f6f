//! What a component must be to serve as a cell: a component (not a core module) that
//! exports `wasi:cli/run` and imports nothing a node lacks, and which [`Mode`] it
//! reaches its stream in.

use anyhow::bail;
use wasmtime::Engine;
use wasmtime::component::Component;

/// The interface a cell must import to reach its peer stream.
pub const STREAMS_INTERFACE: &str = "wetware:streams/streams@0.1.0";
/// The interface a cell imports to open streams of its own.
pub const DIALER_INTERFACE: &str = "wetware:streams/dialer@0.1.0";

/// What [`check_world`] found a component to be.
pub(super) struct World {
    /// How it reaches its stream.
    pub(super) mode: Mode,
    /// Whether it imports the dialer.
    pub(super) dials: bool,
}

/// The export a cell must provide (any `0.2.x` patch release links).
const RUN_EXPORT_PREFIX: &str = "wasi:cli/run@0.2.";

/// How a cell reaches its peer stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Through `wetware:streams/create-connection` (the `cell` world).
    Connection,
    /// As stdin and stdout, like an inetd service: any WASI command works.
    Stdio,
}

impl Mode {
    /// The mode as the config file and the flags spell it.
    pub(super) fn name(self) -> &'static str {
        match self {
            Mode::Connection => "connection",
            Mode::Stdio => "stdio",
        }
    }
}

/// Tells a core module or a non-wasm file from a component, with a hint.
pub(super) fn check_header(wasm: &[u8]) -> anyhow::Result<()> {
    const MAGIC: &[u8] = b"\0asm";
    match wasm.get(..8) {
        Some(header) if header.starts_with(MAGIC) => match &header[4..] {
            [0x0d, 0x00, 0x01, 0x00] => Ok(()),
            [0x01, 0x00, 0x00, 0x00] => bail!(
                "this is a core WebAssembly module; a cell must be a component \
                 (build it for `wasm32-wasip2`, or wrap it with `wasm-tools component new`)"
            ),
            version => bail!("unknown WebAssembly version or layer {version:02x?}"),
        },
        _ => bail!("no WebAssembly header (`\\0asm`): not a .wasm file"),
    }
}

/// Checks what the linker cannot say clearly — that the component exports
/// `wasi:cli/run` and imports nothing ww lacks — and picks its mode: a component that
/// imports `wetware:streams` is a connection cell, any other command a stdio cell,
/// unless `forced` says otherwise.
pub(super) fn check_world(
    engine: &Engine,
    component: &Component,
    forced: Option<Mode>,
) -> anyhow::Result<World> {
    let ty = component.component_type();
    let exports: Vec<&str> = ty.exports(engine).map(|(name, _)| name).collect();
    if !exports
        .iter()
        .any(|name| name.starts_with(RUN_EXPORT_PREFIX))
    {
        bail!(
            "it does not export `wasi:cli/run@0.2.x` (exports: {})",
            list(&exports)
        );
    }
    let imports: Vec<&str> = ty.imports(engine).map(|(name, _)| name).collect();
    let unknown: Vec<&str> = imports
        .iter()
        .copied()
        .filter(|name| {
            *name != STREAMS_INTERFACE && *name != DIALER_INTERFACE && !name.starts_with("wasi:")
        })
        .collect();
    if !unknown.is_empty() {
        bail!(
            "it imports {}, which a ww node does not provide",
            list(&unknown)
        );
    }
    let detected = if imports.contains(&STREAMS_INTERFACE) {
        Mode::Connection
    } else {
        Mode::Stdio
    };
    let mode = match forced {
        Some(Mode::Connection) if detected == Mode::Stdio => bail!(
            "mode = \"connection\", but it does not import `{STREAMS_INTERFACE}`, so it cannot \
             reach its peer stream (imports: {})",
            list(&imports)
        ),
        Some(mode) => mode,
        None => detected,
    };
    let dials = imports.contains(&DIALER_INTERFACE);
    Ok(World { mode, dials })
}

fn list(names: &[&str]) -> String {
    if names.is_empty() {
        "none".to_string()
    } else {
        names.join(", ")
    }
}
