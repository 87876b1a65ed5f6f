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
            output: None,
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
        let connection = self.table.get_mut(&connection)?;
        let dialed = connection.dialed;
        let Some(output) = connection.output.take() else {
            wasmtime::bail!("get-output-stream called twice on the same connection");
        };
        let resource = self.table.push(output)?;
        if !dialed {
            self.output = Some(Resource::new_own(resource.rep()));
        }
        Ok(resource)
    }

    fn drop(&mut self, connection: Resource<Connection>) -> wasmtime::Result<()> {
        let connection = self.table.delete(connection)?;
        if !connection.dialed {
            self.connection = ConnectionState::Dropped(connection.output);
        }
        Ok(())
    }
}
