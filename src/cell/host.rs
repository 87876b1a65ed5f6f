//! The store data of one cell instance ([`Host`]) and the host side of
//! `wetware:streams`, implemented from the traits that `bindgen!` generates.

use wasmtime::component::{Resource, ResourceTable};
use wasmtime_wasi::p2::{DynInputStream, DynOutputStream};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::dialer::InstanceDialer;
use super::meter::{CpuMeter, MemoryLimiter};
use crate::limits::Limits;

mod generated {
    wasmtime::component::bindgen!({
        path: "wit",
        world: "wetware:streams/dialing-cell",
        imports: {
            default: tracing | trappable,
            // Dialing waits on the network.
            "wetware:streams/dialer.dial": async | tracing | trappable,
            "wetware:streams/dialer.dial-any": async | tracing | trappable,
            "wetware:streams/dialer.providers": async | tracing | trappable,
        },
        exports: { default: async },
        with: {
            // `input-stream` and `output-stream` are wasmtime-wasi's own resources, so
            // the guest can use every `wasi:io` function on the peer's stream.
            "wasi": wasmtime_wasi::p2::bindings,
            "wetware:streams/streams.connection": super::Connection,
        },
    });
}

pub(super) use generated::wetware::streams::{dialer, streams};
/// The bindings of a cell's world (`dialing-cell` covers `cell` too).
pub use generated::{DialingCell as Cell, DialingCellPre as CellPre};

/// The two halves of a stream, adapted to `wasi:io`: the peer stream that started an
/// instance, or one the instance dialed.
///
/// Each half can be taken once: `get-input-stream` and `get-output-stream` move it
/// into the guest's resource table.
pub struct Connection {
    input: Option<DynInputStream>,
    output: Option<DynOutputStream>,
    /// Opened by the instance (`dialer`), not the stream that started it.
    dialed: bool,
}

impl Connection {
    /// Wraps an input and an output stream that belong to the peer stream that
    /// started an instance.
    pub fn new(input: DynInputStream, output: DynOutputStream) -> Self {
        Self {
            input: Some(input),
            output: Some(output),
            dialed: false,
        }
    }

    /// Wraps the halves of a stream the instance opened itself.
    pub(super) fn dialed(input: DynInputStream, output: DynOutputStream) -> Self {
        Self {
            dialed: true,
            ..Self::new(input, output)
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
    Claimed,
    /// The guest dropped the connection.
    Dropped,
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
    /// How the instance opens streams of its own, if its cell may.
    pub(super) dialer: Option<InstanceDialer>,
}

impl Host {
    /// Store data for an instance serving `connection` (or none) within `limits`,
    /// dialing with `dialer` (if its cell may).
    pub fn new(
        wasi: WasiCtx,
        connection: Option<Connection>,
        limits: &Limits,
        dialer: Option<InstanceDialer>,
    ) -> Self {
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
            dialer,
        }
    }

    /// Puts a connection into the guest's resource table.
    pub(super) fn push_connection(
        &mut self,
        connection: Connection,
    ) -> wasmtime::Result<Resource<Connection>> {
        Ok(self.table.push(connection)?)
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
        self.connection = ConnectionState::Claimed;
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
        Ok(self.table.push(output)?)
    }

    fn drop(&mut self, connection: Resource<Connection>) -> wasmtime::Result<()> {
        let connection = self.table.delete(connection)?;
        if !connection.dialed {
            self.connection = ConnectionState::Dropped;
        }
        Ok(())
    }
}
