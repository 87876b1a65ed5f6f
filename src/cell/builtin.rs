//! The cells that ship inside the `ww` binary, built from `protocols/` by `build.rs`.

/// A cell compiled into the binary.
#[derive(Debug, Clone, Copy)]
pub struct Builtin {
    /// Short name, also the crate's name under `protocols/`.
    pub name: &'static str,
    /// The libp2p protocol it is served on by default.
    pub protocol: &'static str,
    /// The component's bytes.
    pub wasm: &'static [u8],
    /// Served by `ww run` when no cell is configured. Cells that dial are not: they
    /// need a grant, given where the cell is configured.
    pub default: bool,
}

/// Every built-in cell; the `default` ones are served when no cell is configured.
pub const BUILTINS: &[Builtin] = &[
    Builtin {
        name: "calc",
        protocol: "/ww/calc/0.1.0",
        wasm: include_bytes!(concat!(env!("OUT_DIR"), "/calc.wasm")),
        default: true,
    },
    Builtin {
        name: "echo",
        protocol: "/ww/echo/0.1.0",
        wasm: include_bytes!(concat!(env!("OUT_DIR"), "/echo.wasm")),
        default: true,
    },
    Builtin {
        name: "fanout",
        protocol: "/ww/fanout/0.1.0",
        wasm: include_bytes!(concat!(env!("OUT_DIR"), "/fanout.wasm")),
        default: false,
    },
    Builtin {
        name: "forward",
        protocol: "/ww/forward/0.1.0",
        wasm: include_bytes!(concat!(env!("OUT_DIR"), "/forward.wasm")),
        default: false,
    },
    Builtin {
        name: "sha256",
        protocol: "/ww/sha256/0.1.0",
        wasm: include_bytes!(concat!(env!("OUT_DIR"), "/sha256.wasm")),
        default: true,
    },
];

/// Looks a built-in cell up by name.
pub fn find(name: &str) -> Option<&'static Builtin> {
    BUILTINS.iter().find(|cell| cell.name == name)
}
