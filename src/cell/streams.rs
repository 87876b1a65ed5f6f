//! The host side of `wetware:streams/streams`: the connection that hands an instance
//! the peer stream that started it, as a view ([`StreamsView`]) over the parts of the
//! store data it needs, with its own [`add_to_linker`] (the pattern of wasmtime's
//! `wasi-config`).

use wasmtime::component::{HasData, Linker, Resource, ResourceTable};
use wasmtime_wasi::p2::{DynInputStream, DynOutputStream};

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

/// The generated bindings of the interface (other interfaces that `use` it, such as
/// the dialer's, map to these).
pub use generated::wetware::streams::streams as bindings;
/// The bindings of a cell's world: every cell exports `wasi:cli/run`, whatever else
/// (the dialer) it imports.
pub use generated::{Cell, CellPre};

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

/// Where an instance's own connection (the peer stream that started it) is.
pub(super) enum ConnectionState {
    /// No peer started this instance (`ww cell --no-connection`, tests).
    Absent,
    /// Waiting for `create-connection`.
    Unclaimed(Connection),
    /// In the guest's resource table.
    Claimed,
    /// The guest dropped the connection.
    Dropped,
}

impl ConnectionState {
    /// The state of an instance started for `connection` (or for none).
    pub(super) fn new(connection: Option<Connection>) -> Self {
        match connection {
            Some(connection) => Self::Unclaimed(connection),
            None => Self::Absent,
        }
    }
}

/// What `wetware:streams/streams` needs of an instance's store data.
pub struct StreamsView<'a> {
    /// The instance's own connection.
    pub(super) connection: &'a mut ConnectionState,
    /// The guest's resources.
    pub(super) table: &'a mut ResourceTable,
}

/// Adds `wetware:streams/streams` to `linker`, reaching each instance's state
/// through `view`.
pub fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    view: fn(&mut T) -> StreamsView<'_>,
) -> wasmtime::Result<()> {
    bindings::add_to_linker::<T, HasStreams>(linker, view)
}

/// Names [`StreamsView`] as the data the generated bindings work on.
struct HasStreams;

impl HasData for HasStreams {
    type Data<'a> = StreamsView<'a>;
}

impl bindings::Host for StreamsView<'_> {
    fn create_connection(&mut self) -> wasmtime::Result<Resource<Connection>> {
        let connection = match std::mem::replace(self.connection, ConnectionState::Absent) {
            ConnectionState::Unclaimed(connection) => connection,
            ConnectionState::Absent => {
                wasmtime::bail!("create-connection: no peer stream started this instance")
            }
            claimed => {
                *self.connection = claimed;
                wasmtime::bail!("create-connection called twice: an instance has one connection")
            }
        };
        let resource = self.table.push(connection)?;
        *self.connection = ConnectionState::Claimed;
        Ok(resource)
    }
}

impl bindings::HostConnection for StreamsView<'_> {
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
            *self.connection = ConnectionState::Dropped;
        }
        Ok(())
    }
}
