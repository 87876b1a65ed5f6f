//! The store data of one cell instance ([`Host`]) and the host side of
//! `wetware:streams`, implemented from the traits that `bindgen!` generates.

use wasmtime::component::{Resource, ResourceTable};
use wasmtime_wasi::p2::{DynInputStream, DynOutputStream};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::meter::{CpuMeter, MemoryLimiter};
use crate::limits::Limits;

mod generated {
    wasmtime::component::bindgen!({
        path: "wit",
        world: "wetware:streams/cell",
        imports: { default: tracing | trappable },
        exports: { default: async },
        with: {
            // `input-stream` and `output-stream` are wasmtime-wasi's own resources, so
            // the guest can use every `wasi:io` function on the peer's stream.
            "wasi": wasmtime_wasi::p2::bindings,
            "wetware:streams/streams.connection": super::Connection,
        },
    });
}

pub(super) use generated::wetware::streams::streams;
pub use generated::{Cell, CellPre};

/// The two halves of the peer stream that started an instance, adapted to `wasi:io`.
///
/// Each half can be taken once: `get-input-stream` and `get-output-stream` move it
/// into the guest's resource table.
pub struct Connection {
    input: Option<DynInputStream>,
    output: Option<DynOutputStream>,
}

impl Connection {
    /// Wraps an input and an output stream that belong to one peer stream.
    pub fn new(input: DynInputStream, output: DynOutputStream) -> Self {
        Self {
            input: Some(input),
            output: Some(output),
        }
    }
}

/// Where an instance's connection is.
enum ConnectionState {
    /// No peer started this instance (`ww cell --no-connection`, tests).
    Absent,
    /// Waiting for `create-connection`.
    Unclaimed(Connection),
    /// In the guest's resource table.
    Claimed(Resource<Connection>),
    /// The guest dropped the connection; an output half it never took stays here so
    /// that `run` returning still closes the peer stream gracefully.
    Dropped(Option<DynOutputStream>),
}

/// Most resources one instance may hold at once.
const MAX_RESOURCES: usize = 1024;

/// Everything one cell instance owns: its WASI context, its resource table, the
/// peer stream it was started for, and the meters that enforce its limits.
pub struct Host {
    wasi: WasiCtx,
    table: ResourceTable,
    /// Time spent in wasm.
    pub cpu: CpuMeter,
    /// Linear memory and table sizes.
    pub memory: MemoryLimiter,
    connection: ConnectionState,
    /// The output half once the guest took it, so the host can close it if the guest
    /// returns from `run` still holding it.
    output: Option<Resource<DynOutputStream>>,
}

impl Host {
    /// Store data for an instance serving `connection` (or none) within `limits`.
    pub fn new(wasi: WasiCtx, connection: Option<Connection>, limits: &Limits) -> Self {
        let connection = match connection {
            Some(connection) => ConnectionState::Unclaimed(connection),
            None => ConnectionState::Absent,
        };
        let mut table = ResourceTable::new();
        table.set_max_capacity(MAX_RESOURCES);
        Self {
            wasi,
            table,
            cpu: CpuMeter::new(limits.cpu()),
            memory: MemoryLimiter::new(limits.memory_bytes()),
            connection,
            output: None,
        }
    }

    /// Takes the peer's output half back from wherever it is, so the host can flush
    /// and close it after `run` returned. `None` if the guest already dropped it
    /// (dropping flushed and closed it).
    pub fn take_output(&mut self) -> Option<DynOutputStream> {
        let untaken = match &mut self.connection {
            ConnectionState::Absent => None,
            ConnectionState::Unclaimed(connection) => connection.output.take(),
            ConnectionState::Claimed(resource) => {
                let connection = self.table.get_mut(resource).ok();
                connection.and_then(|connection| connection.output.take())
            }
            ConnectionState::Dropped(output) => output.take(),
        };
        // A stale handle is harmless: if the guest dropped its output stream and the
        // slot now holds another output stream, the instance is over anyway.
        untaken.or_else(|| self.table.delete(self.output.take()?).ok())
    }
}

impl WasiView for Host {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl streams::Host for Host {
    fn create_connection(&mut self) -> wasmtime::Result<Resource<Connection>> {
        let connection = match std::mem::replace(&mut self.connection, ConnectionState::Absent) {
            ConnectionState::Unclaimed(connection) => connection,
            ConnectionState::Absent => {
                wasmtime::bail!("create-connection: no peer stream started this instance")
            }
            claimed => {
                self.connection = claimed;
                wasmtime::bail!("create-connection called twice: an instance has one connection")
            }
        };
        let resource = self.table.push(connection)?;
        self.connection = ConnectionState::Claimed(Resource::new_own(resource.rep()));
        Ok(resource)
    }
}

impl streams::HostConnection for Host {
    fn get_input_stream(
        &mut self,
        connection: Resource<Connection>,
    ) -> wasmtime::Result<Resource<DynInputStream>> {
        let Some(input) = self.table.get_mut(&connection)?.input.take() else {
            wasmtime::bail!("get-input-stream called twice on the same connection");
        };
        Ok(self.table.push(input)?)
    }

    fn get_output_stream(
        &mut self,
        connection: Resource<Connection>,
    ) -> wasmtime::Result<Resource<DynOutputStream>> {
        let Some(output) = self.table.get_mut(&connection)?.output.take() else {
            wasmtime::bail!("get-output-stream called twice on the same connection");
        };
        let resource = self.table.push(output)?;
        self.output = Some(Resource::new_own(resource.rep()));
        Ok(resource)
    }

    fn drop(&mut self, connection: Resource<Connection>) -> wasmtime::Result<()> {
        let connection = self.table.delete(connection)?;
        self.connection = ConnectionState::Dropped(connection.output);
        Ok(())
    }
}
