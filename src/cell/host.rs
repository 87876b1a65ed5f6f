//! The store data of one cell instance ([`Host`]), and the views of it that each
//! interface's host side works on ([`Host::streams`], [`Host::dialer`]).

use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::dialer::{DialerView, InstanceDialer};
use super::meter::{CpuMeter, MemoryLimiter};
use super::streams::{Connection, ConnectionState, StreamsView};
use crate::limits::Limits;

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
    dialer: Option<InstanceDialer>,
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
        let mut table = ResourceTable::new();
        table.set_max_capacity(MAX_RESOURCES);
        Self {
            wasi,
            table,
            cpu: CpuMeter::new(limits.cpu()),
            memory: MemoryLimiter::new(limits.memory_bytes()),
            connection: ConnectionState::new(connection),
            dialer,
        }
    }

    /// What `wetware:streams/streams` works on.
    pub fn streams(&mut self) -> StreamsView<'_> {
        StreamsView {
            connection: &mut self.connection,
            table: &mut self.table,
        }
    }

    /// What `wetware:streams/dialer` works on.
    pub fn dialer(&mut self) -> DialerView<'_> {
        DialerView {
            dialer: self.dialer.as_mut(),
            table: &mut self.table,
        }
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
