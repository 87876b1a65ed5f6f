//! The process-wide wasmtime state ([`Runtime`]): one engine (pooling when the machine
//! allows it) and one linker, an epoch ticker, and loading a cell — compile (or take
//! it from the cache), check its world, pre-instantiate — into a [`Cell`].

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use super::world::{DIALER_INTERFACE, Mode, check_header, check_world};
use super::{Cache, Cell, CellPre, DialGrant, Host, dialer, streams};
use crate::limits::Limits;
use crate::metrics::{CellLabel, Metrics};
use crate::net::network::Network;

/// How often the engine's epoch advances. A guest in a busy loop yields its worker
/// thread to other tasks once per tick.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Deepest wasm stack a guest may use; deeper recursion traps (the host's stack is
/// never at risk: each instance runs on a fiber stack of its own, larger than this).
pub const MAX_WASM_STACK: usize = 512 << 10;

/// Bytes of each pooled linear memory that stay resident between instances (reset
/// in place, see [`PoolingAllocationConfig::pagemap_scan`]); what an instance
/// dirtied beyond it is given back to the kernel. Each pool slot that ever ran an
/// instance may keep up to this much resident.
pub const MEMORY_KEEP_RESIDENT: usize = 1 << 20;

/// Bytes of each pooled table kept resident between instances (a small cell's
/// tables fit in a page or two).
pub const TABLE_KEEP_RESIDENT: usize = 64 << 10;

/// How many instances of what size the engine must be able to hold at once.
#[derive(Debug, Clone, Copy)]
pub struct PoolSize {
    /// Live instances at once.
    pub instances: u32,
    /// The largest linear memory of any one instance, in bytes.
    pub memory_bytes: usize,
}

/// The process-wide wasmtime state that cells are compiled and run with.
pub struct Runtime {
    pub(super) engine: Engine,
    linker: Linker<Host>,
    pub(super) metrics: Arc<Metrics>,
    cache: Option<Cache>,
    /// Whether instances come from the pooling allocator.
    pub pooling: bool,
    /// Whether a freed instance's memory and tables are reset in place (see
    /// [`reset_in_place`]).
    pub reset_in_place: bool,
}

impl Runtime {
    /// Creates the engine (pooling allocator if this machine allows it, on-demand
    /// otherwise), its linker with WASI and `wetware:streams`, and the epoch ticker.
    pub fn new(
        pool: Option<PoolSize>,
        metrics: Arc<Metrics>,
        cache: Option<Cache>,
    ) -> anyhow::Result<Arc<Self>> {
        let in_place = reset_in_place();
        let (engine, pooling) = match Engine::new(&engine_config(pool, in_place)) {
            Ok(engine) => (engine, pool.is_some()),
            Err(error) if pool.is_some() => {
                tracing::warn!(%error, "pooling allocator unavailable; allocating instances on demand");
                (
                    Engine::new(&engine_config(None, false)).map_err(anyhow::Error::from)?,
                    false,
                )
            }
            Err(error) => return Err(error.into()),
        };
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        streams::add_to_linker(&mut linker, Host::streams)?;
        dialer::add_to_linker(&mut linker, Host::dialer)?;
        spawn_epoch_ticker(&engine)?;
        Ok(Arc::new(Self {
            engine,
            linker,
            metrics,
            cache,
            pooling,
            reset_in_place: pooling && in_place,
        }))
    }

    /// What this runtime's instances did.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Compiles and validates a cell and prepares its instantiation; its instances
    /// will run within `options.limits` and be counted as `options.name`. `source`
    /// names the bytes in error messages (a file path, or `built-in echo`).
    pub fn load(
        self: &Arc<Self>,
        source: &str,
        wasm: &[u8],
        options: &CellOptions,
    ) -> anyhow::Result<Cell> {
        check_header(wasm).with_context(|| format!("{source}: not a WebAssembly component"))?;
        let compiled = match &self.cache {
            Some(cache) => cache.load_or_compile(&self.engine, wasm),
            None => Component::new(&self.engine, wasm).map(|component| (component, false)),
        };
        let (component, cached) = compiled
            .map_err(anyhow::Error::from)
            .with_context(|| format!("{source}: invalid component"))?;
        let world = check_world(&self.engine, &component, options.mode).with_context(|| {
            format!("{source}: is neither a `wetware:streams/cell` nor a WASI command component")
        })?;
        if world.dials && !options.dial.is_granted() {
            bail!(
                "{source}: imports `{DIALER_INTERFACE}`, but cell `{}` is not granted dialing \
                 (set `dial = true` or `dial = [\"/protocol\", …]` in its config table, or \
                 pass --grant-dial PROTOCOL)",
                options.name
            );
        }
        let pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(anyhow::Error::from)
            .with_context(|| format!("{source}: cannot be linked"))?;
        let pre = CellPre::new(pre)
            .map_err(anyhow::Error::from)
            .with_context(|| format!("{source}: does not export `wasi:cli/run`"))?;
        Ok(Cell {
            runtime: self.clone(),
            pre,
            limits: options.limits,
            mode: world.mode,
            grant: Arc::new(options.dial.clone()),
            network: options.network.clone(),
            cached,
            label: CellLabel {
                cell: options.name.clone(),
            },
        })
    }
}

/// How to load a cell.
#[derive(Debug, Clone)]
pub struct CellOptions {
    /// Its name in logs and metrics.
    pub name: String,
    /// The limits its instances run within.
    pub limits: Limits,
    /// Force a mode instead of detecting it from the component's imports.
    pub mode: Option<Mode>,
    /// What its instances may dial (`wetware:streams/dialer`).
    pub dial: DialGrant,
    /// The network they dial through; `None` runs them offline (`ww cell`).
    pub network: Option<Network>,
}

/// Core instances the pool allows per component instance: room for a guest with an
/// interpreter inside (a Python cell has about 16).
const CORE_INSTANCES_PER_INSTANCE: u32 = 32;

/// Linear memories the pool allows per component instance, address space allowing
/// (see [`MEMORY_ADDRESS_SPACE`]).
const MEMORIES_PER_INSTANCE: u32 = 4;

/// Address space each pooled linear memory reserves: wasmtime's default reservation
/// on 64-bit hosts (which lets compiled code skip bounds checks), set explicitly so
/// the pool's size is computed from the numbers the engine uses.
const MEMORY_RESERVATION: u64 = 4 << 30;

/// The guard region after each pooled linear memory (wasmtime's default).
const MEMORY_GUARD: u64 = 32 << 20;

/// The most address space the pool's linear memories may reserve: half of the
/// 128 TiB a 64-bit Linux process has. Past it the pool holds fewer than
/// [`MEMORIES_PER_INSTANCE`] per instance (but never fewer than one): at 4 GiB a
/// memory, 4 per instance fit up to about 4,000 instances. A larger pool could not
/// be mapped at all, and the node would fall back to allocating on demand.
const MEMORY_ADDRESS_SPACE: u64 = 64 << 40;

/// How many linear memories a pool for `size` holds.
fn pooled_memories(size: PoolSize) -> u32 {
    let slot = (size.memory_bytes as u64).max(MEMORY_RESERVATION) + MEMORY_GUARD;
    let fit = u32::try_from(MEMORY_ADDRESS_SPACE / slot).unwrap_or(u32::MAX);
    let wanted = size.instances.saturating_mul(MEMORIES_PER_INSTANCE);
    wanted.min(fit).max(size.instances)
}

fn engine_config(pool: Option<PoolSize>, reset_in_place: bool) -> Config {
    let mut config = Config::new();
    config.epoch_interruption(true);
    config.wasm_component_model(true);
    config.max_wasm_stack(MAX_WASM_STACK);
    config.memory_reservation(MEMORY_RESERVATION);
    config.memory_guard_size(MEMORY_GUARD);
    if let Some(size) = pool {
        let mut pool = PoolingAllocationConfig::default();
        let n = size.instances;
        // A small Rust cell is one component instance made of a few core instances,
        // one memory and a few tables; a Python one (componentize-py) about 16 core
        // instances. The pool must hold `instances` of the heaviest cell a node may
        // serve, or streams past a fraction of them fail instead of waiting for a
        // slot. The counts are limits, not reservations: an unused slot costs little
        // but address space.
        pool.total_component_instances(n)
            .total_core_instances(n.saturating_mul(CORE_INSTANCES_PER_INSTANCE))
            .total_memories(pooled_memories(size))
            .total_tables(n.saturating_mul(CORE_INSTANCES_PER_INSTANCE))
            .total_stacks(n)
            .max_memory_size(size.memory_bytes)
            // A freed table is reset with `memset` rather than `madvise` (which
            // costs a TLB shootdown on every core running the process).
            .table_keep_resident(TABLE_KEEP_RESIDENT);
        if reset_in_place {
            pool.pagemap_scan(Enabled::Yes)
                .linear_memory_keep_resident(MEMORY_KEEP_RESIDENT);
        }
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    }
    config
}

/// Whether a freed pool slot's memory and tables are reset in place: with
/// PAGEMAP_SCAN (Linux ≥ 6.7) only the pages its instance dirtied are reset, and stay
/// resident, so the next instance faults in nothing. Without it, keep-resident would
/// `memset` the first bytes whether dirtied or not, which costs more than it saves.
///
/// This relies on ww's patched wasmtime (`vendor/README.md`): upstream 48 stops
/// resetting after 32 dirty regions (a Python or JavaScript guest dirties hundreds
/// and re-faulted them all on every stream), and skips swapped-out pages, which the
/// next instance in the slot would read as the last one left them.
fn reset_in_place() -> bool {
    PoolingAllocationConfig::is_pagemap_scan_available()
}

/// Advances the engine's epoch every [`EPOCH_TICK`] for as long as the engine lives,
/// on a thread of its own (as wasmtime's docs suggest): a guest in a busy loop only
/// yields when the epoch moves, so the ticker must never wait for a tokio worker that
/// such a guest occupies. An increment is one atomic add; it wakes no task.
fn spawn_epoch_ticker(engine: &Engine) -> anyhow::Result<()> {
    let engine = engine.weak();
    std::thread::Builder::new()
        .name("ww-epoch".into())
        .spawn(move || {
            loop {
                std::thread::sleep(EPOCH_TICK);
                match engine.upgrade() {
                    Some(engine) => engine.increment_epoch(),
                    None => return,
                }
            }
        })
        .context("cannot start the epoch thread")?;
    Ok(())
}

/// Loads a cell from a file, naming the file in every error.
pub fn load_file(
    runtime: &Arc<Runtime>,
    path: &Path,
    options: &CellOptions,
) -> anyhow::Result<Cell> {
    let wasm = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    runtime.load(&path.display().to_string(), &wasm, options)
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmtime::{Instance, Memory, Module, Store};

    /// `(module (memory (export "m") 16))`: 1 MiB of memory, no image.
    const ONE_MEMORY: &[u8] = &[
        0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, // magic, version
        0x05, 0x03, 0x01, 0x00, 0x10, // memory section: one memory, min 16 pages
        0x07, 0x05, 0x01, 0x01, b'm', 0x02, 0x00, // export "m" = memory 0
    ];

    const PAGE: usize = 4096;

    /// A pooling engine configured as a node's, its one-memory module, and whether
    /// it resets memory in place (nothing to test here if not).
    fn pooled() -> Option<(Engine, Module)> {
        if !reset_in_place() {
            eprintln!("skipped: this kernel has no PAGEMAP_SCAN");
            return None;
        }
        let pool = PoolSize {
            instances: 4,
            memory_bytes: 2 << 20,
        };
        let engine = Engine::new(&engine_config(Some(pool), true)).unwrap();
        let module = Module::new(&engine, ONE_MEMORY).unwrap();
        Some((engine, module))
    }

    /// Instantiates `module` in a fresh store, checking that it got the pool slot
    /// `slot` held before (the pool keeps a module's slot for its next instance).
    async fn instance(
        engine: &Engine,
        module: &Module,
        slot: &mut Option<usize>,
    ) -> (Store<()>, Memory) {
        let mut store = Store::new(engine, ());
        let instance = Instance::new_async(&mut store, module, &[]).await.unwrap();
        let memory = instance.get_memory(&mut store, "m").unwrap();
        let base = memory.data_ptr(&store) as usize;
        assert!(
            slot.is_none_or(|slot| slot == base),
            "the pool gave another slot"
        );
        *slot = Some(base);
        (store, memory)
    }

    /// Minor page faults this thread has taken.
    fn minor_faults() -> i64 {
        let mut usage = std::mem::MaybeUninit::<libc::rusage>::uninit();
        // SAFETY: getrusage writes a whole `rusage` into the pointer it is given.
        let usage = unsafe {
            assert_eq!(libc::getrusage(libc::RUSAGE_THREAD, usage.as_mut_ptr()), 0);
            usage.assume_init()
        };
        usage.ru_minflt
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_guest_that_dirtied_many_scattered_pages_finds_them_resident_and_clean() {
        let Some((engine, module)) = pooled() else {
            return;
        };
        // Every other page: 96 disjoint dirty regions, three times what one scan
        // reports, and 384 KiB, well within the 1 MiB kept resident.
        let pages: Vec<usize> = (0..96).map(|i| 2 * i * PAGE).collect();
        let mut slot = None;
        {
            let (mut store, memory) = instance(&engine, &module, &mut slot).await;
            let data = memory.data_mut(&mut store);
            for &page in &pages {
                data[page..page + PAGE].fill(0xa5);
            }
        }
        let (mut store, memory) = instance(&engine, &module, &mut slot).await;
        let data = memory.data_mut(&mut store);
        let before = minor_faults();
        for &page in &pages {
            assert!(data[page..page + PAGE].iter().all(|byte| *byte == 0));
            data[page..page + PAGE].fill(0x5a);
        }
        let faults = minor_faults() - before;
        // Upstream wasmtime 48 resets the first 32 regions and decommits the rest,
        // so the new instance faults each of the other 64 pages in again.
        assert!(
            faults < 16,
            "{faults} page faults rewriting {} pages the last instance dirtied",
            pages.len()
        );
    }

    #[test]
    fn a_node_with_ten_thousand_instances_still_gets_a_pool() {
        let size = PoolSize {
            instances: 10_000,
            memory_bytes: 64 << 20,
        };
        let runtime = Runtime::new(Some(size), Arc::new(Metrics::new()), None).unwrap();
        assert!(runtime.pooling, "the pool did not fit the address space");
        assert_eq!(pooled_memories(size), 16_256);
        let default = PoolSize {
            instances: 1_000,
            memory_bytes: 64 << 20,
        };
        assert_eq!(pooled_memories(default), 4_000);
        let huge = PoolSize {
            instances: 100_000,
            memory_bytes: 64 << 20,
        };
        assert_eq!(pooled_memories(huge), 100_000);
    }

    /// Whether the host page at `addr` is swapped out, from /proc/self/pagemap.
    fn is_swapped(addr: usize) -> std::io::Result<bool> {
        use std::os::unix::fs::FileExt as _;
        let pagemap = std::fs::File::open("/proc/self/pagemap")?;
        let mut entry = [0u8; 8];
        pagemap.read_exact_at(&mut entry, (addr / PAGE * 8) as u64)?;
        Ok(u64::from_le_bytes(entry) & (1 << 62) != 0)
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_page_swapped_out_while_an_instance_lives_is_reset_for_the_next_instance() {
        let Some((engine, module)) = pooled() else {
            return;
        };
        let offset = 4 * PAGE;
        let mut slot = None;
        {
            let (mut store, memory) = instance(&engine, &module, &mut slot).await;
            memory.data_mut(&mut store)[offset..offset + PAGE].fill(0xa5);
            let addr = memory.data_ptr(&store) as usize + offset;
            // SAFETY: advice on a page of this live memory; its contents stay valid.
            let advised = unsafe { libc::madvise(addr as *mut _, PAGE, libc::MADV_PAGEOUT) };
            assert_eq!(advised, 0, "{}", std::io::Error::last_os_error());
            if !is_swapped(addr).unwrap() {
                eprintln!("skipped: the page was not swapped out (is swap on?)");
                return;
            }
        }
        let (mut store, memory) = instance(&engine, &module, &mut slot).await;
        let page = &memory.data(&mut store)[offset..offset + PAGE];
        assert!(
            page.iter().all(|byte| *byte == 0),
            "the next instance read what the last one wrote"
        );
    }
}
