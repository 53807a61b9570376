//! The tenant store: per-tenant, per-kind figures aggregated from events,
//! bounded in memory, read by every reader through [`Store::snapshot`].
//!
//! Each tenant has one accumulator, in one of [`TENANT_SHARDS`] shards
//! chosen by a hash of its name. A writer (a UDP receive thread, an HTTP
//! request) holds one shard's lock at a time, from one event to the next of
//! the same shard; with many shards and few writers a lock is uncontended,
//! so it costs an atomic instruction, not a wait. (Before, each writer had
//! its own shard and a tenant one accumulator in each: at 100,000 tenants
//! on two receive threads that was 80 MiB, and every read merged them.)
//!
//! Cardinality is bounded by a count of admitted tenants, checked only when
//! a tenant is not in its shard: at most `max_tenants` are admitted, and
//! events for any tenant beyond that go to the single [`OVERFLOW_TENANT`]
//! bucket and are counted. Tenants idle for longer than `tenant_idle_ttl`
//! are evicted whole, so a tenant's counters never go backwards while it is
//! still tracked.
//!
//! Endpoints and instances (pods) are bounded the same way: each tenant
//! admits at most `max_endpoints_per_tenant` endpoints and the store at most
//! `max_instances` instances, the rest count under [`OTHER_LABEL`], so a
//! flood of random names costs one bucket, not memory.
//!
//! Each tenant's query latency is kept twice: in the 15 classic buckets per
//! kind the text exposition folds, and in one sparse exponential
//! [`NativeHistogram`] over all kinds (a few hundred bytes) for quantiles
//! within a few percent: the detector and the protobuf exposition read it.
//!
//! Each window slot also remembers which sources (UDP, HTTP) its events
//! came through, so detection can tell whose word a tenant's figures rest
//! on (`detect.tighten_from`).
//!
//! Lock order: a tenant shard, then a writer's instances, then a registry;
//! a writer holds at most one tenant shard at a time.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crate::event::{Event, OVERFLOW_TENANT, QueryKind, Sample};
use crate::store::{NativeHistogram, Source};

/// The endpoint or instance that gathers those beyond the caps.
pub const OTHER_LABEL: &str = "__other__";

/// Upper bounds of the latency histogram buckets, in seconds: 0.5 ms to 30 s.
pub const LATENCY_BUCKETS_SECONDS: [f64; 15] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
const LATENCY_BUCKETS_MS: [f64; 15] = [
    0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0,
    30000.0,
];
/// Buckets including the final `+Inf` one.
pub const BUCKET_COUNT: usize = LATENCY_BUCKETS_SECONDS.len() + 1;

/// Quantile from per-bucket counts, interpolated as Prometheus'
/// `histogram_quantile` does.
pub fn quantile(q: f64, buckets: &[f64; BUCKET_COUNT]) -> Option<f64> {
    let total: f64 = buckets.iter().sum();
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut cumulative = 0.0;
    for (i, count) in buckets.iter().enumerate() {
        let previous = cumulative;
        cumulative += count;
        if cumulative >= rank && *count > 0.0 {
            let Some(upper) = LATENCY_BUCKETS_SECONDS.get(i) else {
                return LATENCY_BUCKETS_SECONDS.last().copied();
            };
            let lower = if i == 0 {
                0.0
            } else {
                LATENCY_BUCKETS_SECONDS[i - 1]
            };
            return Some(lower + (upper - lower) * (rank - previous) / count);
        }
    }
    LATENCY_BUCKETS_SECONDS.last().copied()
}

/// The sliding window for database-time share is kept as this many slots.
const WINDOW_SLOTS: usize = 12;

/// Shards of the tenant accumulators: enough that the receive threads and
/// HTTP requests seldom meet on one, few enough that a read's pass over
/// them costs nothing.
pub const TENANT_SHARDS: usize = 32;

/// A set of event [`Source`]s, one bit each.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SourceSet(u8);

impl SourceSet {
    pub const EMPTY: SourceSet = SourceSet(0);

    pub fn of(source: Source) -> SourceSet {
        SourceSet(1 << source as u8)
    }

    pub fn contains(self, source: Source) -> bool {
        self.0 & SourceSet::of(source).0 != 0
    }

    pub fn union(self, other: SourceSet) -> SourceSet {
        SourceSet(self.0 | other.0)
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The set as one byte, for the fleet view's exchange.
    pub fn bits(self) -> u8 {
        self.0
    }

    /// The set `bits` says (unknown bits ignored).
    pub fn from_bits(bits: u8) -> SourceSet {
        let known = Source::ALL
            .iter()
            .fold(0, |all, source| all | SourceSet::of(*source).0);
        SourceSet(bits & known)
    }
}

/// One slot of a tenant's sliding window.
#[derive(Debug, Clone, Copy, Default)]
struct WindowSlot {
    /// The slot's number (time / slot length); a stale one is reset. A
    /// slot lasts at least a second (`share_window` is at least 12 s), so
    /// 32 bits last 136 years.
    number: u32,
    db_time_ms: f64,
    /// Sources of the slot's events, of any sample.
    sources: SourceSet,
}

/// A source of monotonic milliseconds. The daemon uses [`MonotonicClock`];
/// tests drive a [`ManualClock`].
pub trait Clock: Send + Sync + std::fmt::Debug {
    fn now_ms(&self) -> u64;
}

/// Milliseconds since the clock was created.
#[derive(Debug)]
pub struct MonotonicClock(Instant);

impl MonotonicClock {
    pub fn new() -> MonotonicClock {
        MonotonicClock(Instant::now())
    }
}

impl Default for MonotonicClock {
    fn default() -> Self {
        MonotonicClock::new()
    }
}

impl Clock for MonotonicClock {
    fn now_ms(&self) -> u64 {
        self.0.elapsed().as_millis() as u64
    }
}

/// A clock that only moves when told to.
#[derive(Debug, Default)]
pub struct ManualClock(AtomicU64);

impl ManualClock {
    pub fn advance(&self, by: Duration) {
        self.0.fetch_add(by.as_millis() as u64, Ordering::Relaxed);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Limits the store enforces.
#[derive(Debug, Clone)]
pub struct StoreLimits {
    pub max_tenants: usize,
    pub tenant_idle_ttl: Duration,
    pub share_window: Duration,
    /// Endpoints kept per tenant; the rest count under [`OTHER_LABEL`].
    pub max_endpoints_per_tenant: usize,
    /// Instances (pods) kept; the rest count under [`OTHER_LABEL`].
    pub max_instances: usize,
}

/// Cumulative figures for one tenant and one kind of query. Counts are `f64`
/// because sampled DogStatsD lines weigh `1/rate`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KindTotals {
    pub queries: f64,
    pub errors: f64,
    pub rows: f64,
    pub duration_sum_ms: f64,
    /// Per-bucket (not cumulative) query counts; the last is `+Inf`.
    pub buckets: [f64; BUCKET_COUNT],
}

impl KindTotals {
    /// Adds `weight` observations of `duration_ms`.
    fn observe(&mut self, duration_ms: f64, weight: f64) {
        self.queries += weight;
        self.duration_sum_ms += duration_ms * weight;
        let bucket = LATENCY_BUCKETS_MS.partition_point(|bound| *bound < duration_ms);
        self.buckets[bucket] += weight;
    }
}

#[derive(Debug, Clone, Default)]
struct TenantAccumulator {
    kinds: [Option<KindTotals>; 3],
    /// Query latency of all kinds in exponential buckets (sparse).
    latency: NativeHistogram,
    /// Database time and sources per window slot.
    window: [WindowSlot; WINDOW_SLOTS],
    last_seen_ms: u64,
    /// Only for tenants that send endpoints or schema switches, so the
    /// others cost nothing more to merge at snapshot time.
    extras: Option<Box<TenantExtras>>,
}

/// A tenant's per-endpoint requests and its schema-switch times.
#[derive(Debug, Clone, Default)]
struct TenantExtras {
    /// `queries`, `errors`, `duration_sum_ms` and `buckets` per endpoint.
    endpoints: HashMap<Arc<str>, KindTotals, foldhash::fast::RandomState>,
    schema_switch: Option<KindTotals>,
}

impl TenantAccumulator {
    fn record(
        &mut self,
        kind: QueryKind,
        sample: Sample,
        now_ms: u64,
        slot: u32,
        sources: SourceSet,
    ) {
        self.last_seen_ms = now_ms;
        let entry = &mut self.window[slot as usize % WINDOW_SLOTS];
        if entry.number != slot {
            *entry = WindowSlot {
                number: slot,
                ..WindowSlot::default()
            };
        }
        entry.sources = entry.sources.union(sources);
        if let Sample::SchemaSwitch {
            duration_ms,
            weight,
        } = sample
        {
            // Not a query: no kind, no database time.
            self.extras()
                .schema_switch
                .get_or_insert_with(KindTotals::default)
                .observe(duration_ms, weight);
            return;
        }
        let totals = self.kinds[kind.index()].get_or_insert_with(KindTotals::default);
        match sample {
            Sample::Query {
                duration_ms,
                rows,
                error,
                weight,
            } => {
                totals.queries += weight;
                if error {
                    totals.errors += weight;
                }
                totals.rows += rows * weight;
                let db_time_ms = duration_ms * weight;
                totals.duration_sum_ms += db_time_ms;
                let bucket = LATENCY_BUCKETS_MS.partition_point(|bound| *bound < duration_ms);
                totals.buckets[bucket] += weight;
                self.latency.observe(duration_ms / 1000.0, weight);
                self.window[slot as usize % WINDOW_SLOTS].db_time_ms += db_time_ms;
            }
            Sample::Rows(rows) => totals.rows += rows,
            Sample::Errors(errors) => totals.errors += errors,
            Sample::SchemaSwitch { .. } => {}
        }
    }

    fn extras(&mut self) -> &mut TenantExtras {
        self.extras.get_or_insert_with(Box::default)
    }

    fn has_endpoint(&self, endpoint: &str) -> bool {
        self.extras
            .as_ref()
            .is_some_and(|e| e.endpoints.contains_key(endpoint))
    }

    /// Counts a query against `endpoint` (already admitted).
    fn record_endpoint(&mut self, endpoint: &str, duration_ms: f64, error: bool, weight: f64) {
        let endpoints = &mut self.extras().endpoints;
        let totals = match endpoints.get_mut(endpoint) {
            Some(totals) => totals,
            None => endpoints.entry(endpoint.into()).or_default(),
        };
        totals.observe(duration_ms, weight);
        if error {
            totals.errors += weight;
        }
    }

    /// The slots inside the window that ends at `current_slot`.
    fn in_window(&self, current_slot: u32) -> impl Iterator<Item = &WindowSlot> {
        let oldest = current_slot.saturating_sub(WINDOW_SLOTS as u32 - 1);
        self.window
            .iter()
            .filter(move |s| s.number >= oldest && s.number <= current_slot)
    }

    fn window_ms(&self, current_slot: u32) -> f64 {
        self.in_window(current_slot).map(|s| s.db_time_ms).sum()
    }

    fn window_sources(&self, current_slot: u32) -> SourceSet {
        self.in_window(current_slot)
            .fold(SourceSet::EMPTY, |all, s| all.union(s.sources))
    }

    /// The tenant's figures at read time.
    fn snapshot(&self, tenant: &str, now_ms: u64, current_slot: u32) -> TenantSnapshot {
        let (mut endpoints, schema_switch) = match &self.extras {
            Some(extras) => (
                extras
                    .endpoints
                    .iter()
                    .map(|(endpoint, totals)| (endpoint.to_string(), totals.clone()))
                    .collect(),
                extras.schema_switch.clone(),
            ),
            None => (Vec::new(), None),
        };
        endpoints.sort_unstable_by(|a: &(String, KindTotals), b| a.0.cmp(&b.0));
        TenantSnapshot {
            tenant: tenant.to_owned(),
            kinds: self.kinds.clone(),
            latency: self.latency.clone(),
            window_db_time_ms: self.window_ms(current_slot),
            db_time_share: 0.0,
            window_sources: self.window_sources(current_slot),
            idle_ms: now_ms.saturating_sub(self.last_seen_ms),
            endpoints,
            schema_switch,
        }
    }
}

/// foldhash: several times faster than SipHash on short keys, and seeded per
/// map at random, so tenant ids cannot be chosen to collide; the number of
/// keys is capped by `max_tenants` besides.
/// Keys are `Arc<str>`: the snapshot's index of merged tenants shares them
/// with a reference count, not an allocation.
/// Accumulators are boxed: the table itself stays small (a name and a
/// pointer per slot), so [`shard_room`] can leave it room to spare.
type TenantMap = HashMap<Arc<str>, Box<TenantAccumulator>, foldhash::fast::RandomState>;

/// Queries per instance, and when each was last seen.
type InstanceMap = HashMap<Arc<str>, (f64, u64), foldhash::fast::RandomState>;

/// An id's first 16 bytes, zero-padded, as a number: ids in this number's
/// order are in id (byte) order, but for those that share the 16 bytes
/// (a shorter id sorts before a longer one it begins, as in byte order).
/// Ids that mostly share their first 16 bytes (`customer_tenant_00001`)
/// tie here and are compared whole: no faster than before, never wrong.
fn id_key(id: &str) -> u128 {
    let id = id.as_bytes();
    let mut prefix = [0u8; 16];
    let len = id.len().min(16);
    prefix[..len].copy_from_slice(&id[..len]);
    u128::from_be_bytes(prefix)
}

/// The indexes of `keyed` (each an [`id_key`] and the index of its id,
/// `id_at(index)`) in id order. Sorted on the keys, so that most
/// comparisons read no id: at 100,000 tenants, comparing the ids
/// themselves meant two cache misses a comparison and most of a list's
/// cost. Ids whose keys tie are compared whole.
fn id_order<'a>(keyed: &mut [(u128, u32)], id_at: impl Fn(usize) -> &'a str) -> Vec<u32> {
    keyed.sort_unstable_by(|a, b| {
        a.0.cmp(&b.0)
            .then_with(|| id_at(a.1 as usize).cmp(id_at(b.1 as usize)))
    });
    keyed.iter().map(|&(_, at)| at).collect()
}

/// Puts `items[order[i]]` at `i`, in place, following the permutation's
/// cycles (`order` marks where it has been).
fn permute<T>(items: &mut [T], mut order: Vec<u32>) {
    const DONE: u32 = u32::MAX;
    for start in 0..items.len() {
        let mut at = start;
        while order[at] != DONE {
            let from = order[at] as usize;
            order[at] = DONE;
            if from == start {
                break;
            }
            items.swap(at, from);
            at = from;
        }
    }
}

/// Locks a mutex, ignoring poisoning: the data behind our locks are plain
/// counters that stay consistent even if a holder panicked.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The per-tenant store. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct Store {
    /// Each tenant in the shard its name hashes to.
    tenant_shards: Box<[Mutex<TenantMap>]>,
    /// Chooses a tenant's shard; seeded at random, as the maps are.
    shard_hasher: foldhash::fast::RandomState,
    /// Queries per instance, one map per writer index (merged at read
    /// time: instances are few).
    instance_shards: Box<[Mutex<InstanceMap>]>,
    /// Tenants admitted under `max_tenants`, excluding the overflow bucket.
    tracked: AtomicUsize,
    /// The most tenants ever tracked at once: each shard's table is kept
    /// large enough for its part of them ([`shard_room`]).
    peak_tracked: AtomicUsize,
    /// Each shard's table's capacity when it was last made room in
    /// ([`Store::evict_idle`]): the room it has without growing.
    room_made: Box<[AtomicUsize]>,
    limits: StoreLimits,
    slot_ms: u64,
    clock: Arc<dyn Clock>,
    overflow_events: AtomicU64,
    evicted: AtomicU64,
    /// Endpoints admitted per tenant, under `max_endpoints_per_tenant`.
    endpoint_registry: Mutex<HashMap<Box<str>, std::collections::HashSet<Box<str>>>>,
    /// Instances admitted, under `max_instances`.
    instance_registry: Mutex<std::collections::HashSet<Box<str>>>,
    endpoints_folded: AtomicU64,
    instances_folded: AtomicU64,
    /// The last exposition snapshot's vectors, emptied and kept for the
    /// next ([`Store::exposition_snapshot`]).
    spare: Mutex<SnapshotRoom>,
}

/// Room for a snapshot: its rows and the keys that put them in order.
/// A snapshot's rows are the largest block a scrape allocates (7.5 MiB at
/// 10,000 tenants); above glibc's fixed mmap threshold (src/heap.rs) fresh
/// ones would be mapped, faulted and zeroed at every scrape. Only the
/// exposition's is kept: the detector's and the API's cover every tenant
/// (25 MiB at 100,000), and kept they would hold that much for good.
#[derive(Debug, Default)]
struct SnapshotRoom {
    rows: Vec<TenantSnapshot>,
    keys: Vec<(u128, u32)>,
}

/// `spare`, emptied, with room for `room` items; or a new vector when the
/// spare has over twice that room (grown for a tenant flood since evicted:
/// kept, it would hold the flood's pages).
fn reused<T>(mut spare: Vec<T>, room: usize) -> Vec<T> {
    if spare.capacity() > room.saturating_mul(2).max(64) {
        return Vec::with_capacity(room);
    }
    spare.clear();
    spare.reserve_exact(room);
    spare
}

/// One tenant's figures at read time.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TenantSnapshot {
    pub tenant: String,
    /// Indexed by [`QueryKind::index`]; `None` for kinds never seen.
    pub kinds: [Option<KindTotals>; 3],
    /// Query latency of all kinds in exponential (native-histogram)
    /// buckets: the fine view, for quantiles within a few percent.
    pub latency: NativeHistogram,
    /// Database time summed over the sliding window, in milliseconds.
    pub window_db_time_ms: f64,
    /// This tenant's share of all tenants' database time over the window.
    pub db_time_share: f64,
    /// The sources its events over the window came through.
    pub window_sources: SourceSet,
    /// Milliseconds since the tenant's last event.
    pub idle_ms: u64,
    /// Per endpoint, by name (at most `max_endpoints_per_tenant` and
    /// [`OTHER_LABEL`]): `queries` are its requests.
    pub endpoints: Vec<(String, KindTotals)>,
    /// Schema-switch times (`queries` counts the switches).
    pub schema_switch: Option<KindTotals>,
}

/// A tenant's totals over every kind, and its share of database time: what
/// a list of every tenant shows, without the histograms a
/// [`TenantSnapshot`] copies.
#[derive(Debug, Clone, PartialEq)]
pub struct TenantSummary {
    pub tenant: Arc<str>,
    pub queries: f64,
    pub errors: f64,
    pub rows: f64,
    pub db_time_share: f64,
}

impl TenantSummary {
    fn of(tenant: Arc<str>, kinds: &[Option<KindTotals>; 3], db_time_share: f64) -> TenantSummary {
        let mut summary = TenantSummary {
            tenant,
            queries: 0.0,
            errors: 0.0,
            rows: 0.0,
            db_time_share,
        };
        for kind in kinds.iter().flatten() {
            summary.queries += kind.queries;
            summary.errors += kind.errors;
            summary.rows += kind.rows;
        }
        summary
    }
}

/// The whole store at read time, tenants sorted by id.
#[derive(Debug, Clone, Default)]
pub struct StoreSnapshot {
    pub tenants: Vec<TenantSnapshot>,
    /// Admitted tenants, not counting the overflow bucket.
    pub tracked: usize,
    /// Events that went to the overflow bucket since start.
    pub overflow_events: u64,
    /// Tenants evicted for idleness since start.
    pub evicted: u64,
    /// All tenants' database time over the window, in milliseconds.
    pub window_db_time_ms: f64,
    /// How far back the window's figures reach now, in milliseconds: its
    /// whole slots and the elapsed part of the current one (between 11/12
    /// of `share_window` and all of it), or less in the store's first
    /// window (a restarted replica's window starts empty).
    pub window_covered_ms: u64,
    /// Queries per instance, by name (at most `max_instances` and
    /// [`OTHER_LABEL`]).
    pub instances: Vec<(String, f64)>,
    /// Events whose endpoint or instance went to [`OTHER_LABEL`] since start.
    pub endpoints_folded: u64,
    pub instances_folded: u64,
}

impl StoreSnapshot {
    /// Each tenant's [`TenantSummary`], in id order.
    pub fn summaries(&self) -> Vec<TenantSummary> {
        self.tenants
            .iter()
            .map(|t| TenantSummary::of(t.tenant.as_str().into(), &t.kinds, t.db_time_share))
            .collect()
    }
}

impl Store {
    pub fn new(shard_count: usize, limits: StoreLimits, clock: Arc<dyn Clock>) -> Store {
        let slot_ms = (limits.share_window.as_millis() as u64 / WINDOW_SLOTS as u64).max(1);
        Store {
            tenant_shards: (0..TENANT_SHARDS).map(|_| Mutex::default()).collect(),
            shard_hasher: foldhash::fast::RandomState::default(),
            instance_shards: (0..shard_count.max(1)).map(|_| Mutex::default()).collect(),
            tracked: AtomicUsize::new(0),
            peak_tracked: AtomicUsize::new(0),
            room_made: (0..TENANT_SHARDS).map(|_| AtomicUsize::new(0)).collect(),
            limits,
            slot_ms,
            clock,
            overflow_events: AtomicU64::new(0),
            evicted: AtomicU64::new(0),
            endpoint_registry: Mutex::default(),
            instance_registry: Mutex::default(),
            endpoints_folded: AtomicU64::new(0),
            instances_folded: AtomicU64::new(0),
            spare: Mutex::default(),
        }
    }

    /// The writers' count (for their instance maps); tenants have
    /// [`TENANT_SHARDS`] shards whatever it is.
    pub fn shard_count(&self) -> usize {
        self.instance_shards.len()
    }

    /// A writer for a batch of events, as writer `index` (modulo the
    /// shard count): it locks the shard of each event's tenant as it goes.
    pub fn writer(&self, index: usize) -> ShardWriter<'_> {
        let now_ms = self.clock.now_ms();
        ShardWriter {
            held: None,
            instances: &self.instance_shards[index % self.instance_shards.len()],
            store: self,
            now_ms,
            slot: self.slot_at(now_ms),
            sources: SourceSet::EMPTY,
        }
    }

    /// How far back the window reaches at `now_ms` (its slots, as
    /// `TenantAccumulator::in_window` reads them).
    fn window_span_ms(&self, now_ms: u64) -> u64 {
        (WINDOW_SLOTS as u64 - 1) * self.slot_ms + now_ms % self.slot_ms
    }

    fn slot_at(&self, now_ms: u64) -> u32 {
        u32::try_from(now_ms / self.slot_ms).unwrap_or(u32::MAX)
    }

    fn shard_of(&self, tenant: &str) -> usize {
        use std::hash::BuildHasher as _;
        (self.shard_hasher.hash_one(tenant) % TENANT_SHARDS as u64) as usize
    }

    /// Admits `endpoint` for `tenant` if it is known or there is room.
    fn admit_endpoint(&self, tenant: &str, endpoint: &str) -> bool {
        let mut registry = lock(&self.endpoint_registry);
        let admitted = match registry.get_mut(tenant) {
            Some(admitted) => admitted,
            None => registry.entry(tenant.into()).or_default(),
        };
        admit_under(admitted, endpoint, self.limits.max_endpoints_per_tenant)
    }

    /// Admits `instance` if it is known or there is room.
    fn admit_instance(&self, instance: &str) -> bool {
        let mut registry = lock(&self.instance_registry);
        admit_under(&mut registry, instance, self.limits.max_instances)
    }

    /// Counts a tenant not yet in its shard in, if there is room for it.
    fn admit(&self) -> bool {
        let max = self.limits.max_tenants;
        match self
            .tracked
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < max).then_some(n + 1)
            }) {
            Ok(before) => {
                self.peak_tracked.fetch_max(before + 1, Ordering::Relaxed);
                true
            }
            Err(_) => false,
        }
    }

    /// Every tenant's figures, one shard at a time (each read under its own
    /// lock), in id order.
    pub fn snapshot(&self) -> StoreSnapshot {
        self.snapshot_of(None, false)
    }

    /// As [`Store::snapshot`], with only the tenants that had an event
    /// within `within` (the exposition's `metrics.idle_after`): an idle
    /// tenant costs a comparison, not a copy. `tracked` still counts every
    /// admitted tenant.
    pub fn snapshot_recent(&self, within: Duration) -> StoreSnapshot {
        let within_ms = u64::try_from(within.as_millis()).unwrap_or(u64::MAX);
        self.snapshot_of(Some(within_ms), false)
    }

    /// Every tenant's [`TenantSummary`], in id order: a list's figures at a
    /// fraction of a snapshot's cost (no histogram copied, names shared).
    pub fn summaries(&self) -> Vec<TenantSummary> {
        let current_slot = self.slot_at(self.clock.now_ms());
        let mut summaries: Vec<TenantSummary> = Vec::with_capacity(self.tracked() + 1);
        let mut keyed: Vec<(u128, u32)> = Vec::with_capacity(self.tracked() + 1);
        let mut window_db_time_ms = 0.0;
        for shard in self.tenant_shards.iter() {
            for (name, acc) in lock(shard).iter() {
                // The share's numerator, until the total is known.
                let window_ms = acc.window_ms(current_slot);
                window_db_time_ms += window_ms;
                keyed.push((id_key(name), summaries.len() as u32));
                summaries.push(TenantSummary::of(name.clone(), &acc.kinds, window_ms));
            }
        }
        for summary in &mut summaries {
            summary.db_time_share = if window_db_time_ms > 0.0 {
                summary.db_time_share / window_db_time_ms
            } else {
                0.0
            };
        }
        let order = id_order(&mut keyed, |at| &*summaries[at].tenant);
        permute(&mut summaries, order);
        summaries
    }

    /// One tenant's figures, its share of database time against every
    /// tenant's: a tenant's detail without a snapshot of the others.
    pub fn tenant_snapshot(&self, tenant: &str) -> Option<TenantSnapshot> {
        let now_ms = self.clock.now_ms();
        let current_slot = self.slot_at(now_ms);
        let mut snapshot = lock(&self.tenant_shards[self.shard_of(tenant)])
            .get(tenant)
            .map(|acc| acc.snapshot(tenant, now_ms, current_slot))?;
        let window_db_time_ms: f64 = self
            .tenant_shards
            .iter()
            .map(|shard| {
                lock(shard)
                    .values()
                    .map(|acc| acc.window_ms(current_slot))
                    .sum::<f64>()
            })
            .sum();
        if window_db_time_ms > 0.0 {
            snapshot.db_time_share = snapshot.window_db_time_ms / window_db_time_ms;
        }
        Some(snapshot)
    }

    /// The exposition's snapshot: as [`Store::snapshot_recent`] (or
    /// [`Store::snapshot`] without `within`), filling the vectors of the
    /// last one given back with [`Store::recycle`], so that a warm scrape
    /// allocates no large block.
    pub fn exposition_snapshot(&self, within: Option<Duration>) -> StoreSnapshot {
        let within_ms = within.map(|w| u64::try_from(w.as_millis()).unwrap_or(u64::MAX));
        self.snapshot_of(within_ms, true)
    }

    /// Takes back an exposition snapshot's rows for the next one to fill.
    pub fn recycle(&self, snapshot: StoreSnapshot) {
        let mut rows = snapshot.tenants;
        rows.clear();
        lock(&self.spare).rows = rows;
    }

    /// Both snapshots: every tenant, or those seen within `within_ms`;
    /// in the exposition's kept room if `reuse` ([`SnapshotRoom`]).
    fn snapshot_of(&self, within_ms: Option<u64>, reuse: bool) -> StoreSnapshot {
        let now_ms = self.clock.now_ms();
        let current_slot = self.slot_at(now_ms);
        // Snapshots are a few hundred bytes each: built in place, then put
        // in id order by following the order's cycles (a swap or two each,
        // not a sort's many moves, and no second vector). Room for every
        // tenant up front (a recent snapshot leaves some out, and the room
        // it does not touch costs no RSS): a growing vector copied them all
        // at each doubling.
        let room = self.tracked() + 1;
        let spare = if reuse {
            std::mem::take(&mut *lock(&self.spare))
        } else {
            SnapshotRoom::default()
        };
        let mut tenants_in_shard_order = reused(spare.rows, room);
        let mut keyed = reused(spare.keys, room);
        for shard in self.tenant_shards.iter() {
            let tenants = lock(shard);
            for (name, acc) in tenants.iter() {
                if within_ms.is_some_and(|w| now_ms.saturating_sub(acc.last_seen_ms) > w) {
                    continue;
                }
                keyed.push((id_key(name), tenants_in_shard_order.len() as u32));
                tenants_in_shard_order.push(acc.snapshot(name, now_ms, current_slot));
            }
        }
        let order = id_order(&mut keyed, |at| tenants_in_shard_order[at].tenant.as_str());
        if reuse {
            lock(&self.spare).keys = keyed;
        }
        let mut tenants = tenants_in_shard_order;
        permute(&mut tenants, order);
        let mut instances: HashMap<Arc<str>, f64, foldhash::fast::RandomState> = HashMap::default();
        for shard in self.instance_shards.iter() {
            for (name, (queries, _)) in lock(shard).iter() {
                *instances.entry(name.clone()).or_default() += queries;
            }
        }
        let mut instances: Vec<(String, f64)> = instances
            .into_iter()
            .map(|(name, queries)| (name.to_string(), queries))
            .collect();
        instances.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        // A tenant left out of a recent snapshot has had no event for
        // longer than the window (`metrics.idle_after` is at least
        // `ingest.share_window`): the sum misses none of the window's time.
        let window_db_time_ms: f64 = tenants.iter().map(|t| t.window_db_time_ms).sum();
        if window_db_time_ms > 0.0 {
            for tenant in &mut tenants {
                tenant.db_time_share = tenant.window_db_time_ms / window_db_time_ms;
            }
        }
        StoreSnapshot {
            tracked: self.tracked(),
            tenants,
            overflow_events: self.overflow_events.load(Ordering::Relaxed),
            evicted: self.evicted.load(Ordering::Relaxed),
            window_db_time_ms,
            window_covered_ms: now_ms.min(self.window_span_ms(now_ms)),
            instances,
            endpoints_folded: self.endpoints_folded.load(Ordering::Relaxed),
            instances_folded: self.instances_folded.load(Ordering::Relaxed),
        }
    }

    /// Number of admitted tenants (excluding the overflow bucket).
    pub fn tracked(&self) -> usize {
        self.tracked.load(Ordering::Relaxed)
    }

    /// Removes tenants with no event for `tenant_idle_ttl`, one shard at a
    /// time. Returns how many were evicted.
    pub fn evict_idle(&self) -> usize {
        let now_ms = self.clock.now_ms();
        let ttl_ms = self.limits.tenant_idle_ttl.as_millis() as u64;
        self.evict_idle_instances(now_ms, ttl_ms);
        let mut evicted = 0;
        let mut expired: Vec<Arc<str>> = Vec::new();
        let room = shard_room(self.peak_tracked.load(Ordering::Relaxed));
        for (shard, room_made) in self.tenant_shards.iter().zip(&self.room_made) {
            let mut tenants = lock(shard);
            tenants.retain(|name, acc| {
                let keep = now_ms.saturating_sub(acc.last_seen_ms) < ttl_ms;
                if !keep {
                    expired.push(name.clone());
                }
                keep
            });
            if room > room_made.load(Ordering::Relaxed) {
                // Moved into a new table rather than reserved in: a table
                // with tombstones reserves by doubling, and the capacity
                // it reports leaves them out. Only when the room grows: a
                // name and a pointer per tenant, a few times in a life.
                let mut fresh = TenantMap::with_capacity_and_hasher(
                    room.max(tenants.len()),
                    Default::default(),
                );
                fresh.extend(tenants.drain());
                *tenants = fresh;
                room_made.store(tenants.capacity(), Ordering::Relaxed);
            }
            if expired.is_empty() {
                continue;
            }
            // Under the shard's lock: a tenant back in between would
            // otherwise lose the endpoints it admits again.
            let mut endpoints = lock(&self.endpoint_registry);
            for name in expired.drain(..) {
                endpoints.remove(name.as_ref());
                if *name != *OVERFLOW_TENANT {
                    evicted += 1;
                }
            }
        }
        self.tracked.fetch_sub(evicted, Ordering::Relaxed);
        self.evicted.fetch_add(evicted as u64, Ordering::Relaxed);
        evicted
    }

    /// Removes instances with no event for `tenant_idle_ttl` (pods come and
    /// go; a cap full of departed pods would fold every new one).
    fn evict_idle_instances(&self, now_ms: u64, ttl_ms: u64) {
        let mut shards: Vec<MutexGuard<'_, InstanceMap>> =
            self.instance_shards.iter().map(|s| lock(s)).collect();
        let mut last_seen: HashMap<Arc<str>, u64> = HashMap::new();
        for shard in &shards {
            for (name, (_, seen)) in shard.iter() {
                let latest = last_seen.entry(name.clone()).or_insert(0);
                *latest = (*latest).max(*seen);
            }
        }
        let expired: Vec<Arc<str>> = last_seen
            .into_iter()
            .filter(|(_, seen)| now_ms.saturating_sub(*seen) >= ttl_ms)
            .map(|(name, _)| name)
            .collect();
        if expired.is_empty() {
            return;
        }
        for shard in &mut shards {
            for name in &expired {
                shard.remove(name);
            }
        }
        drop(shards);
        let mut registry = lock(&self.instance_registry);
        for name in &expired {
            registry.remove(name.as_ref());
        }
    }
}

/// The tenants one shard's table makes room for when `peak` were tracked at
/// once: twice their mean share and four standard deviations (a shard's
/// share is binomial), and a few.
///
/// A table never shrinks, so each shard's grows to the most tenants it has
/// held. Under churn (tenants evicted, others admitted, as a flood of new
/// ids does) which shard is the fullest changes from one peak to the next,
/// and the tables crept up for dozens of peaks, each a little, before they
/// held still: an RSS that rose at every flood for an hour. Made room for at
/// once, the tables hold still from the first peak.
///
/// Twice, because an evicted tenant leaves a tombstone in the table, and
/// once tombstones use up the free slots the table rehashes in place only
/// while it is at most half full; fuller, it doubles. With room for twice
/// the most a shard plausibly holds, churn never doubles a table. The
/// room is made by moving the tenants into a new table, once per growth
/// of the room: reserving in a table with tombstones doubles it too.
fn shard_room(peak: usize) -> usize {
    if peak == 0 {
        return 0;
    }
    let mean = peak as f64 / TENANT_SHARDS as f64;
    (2.0 * (mean + 4.0 * mean.sqrt()) + 4.0).ceil() as usize
}

/// Records a batch of events, locking each event's tenant shard (kept
/// locked while the next events are of the same shard).
pub struct ShardWriter<'a> {
    /// The tenant shard locked now, by index.
    held: Option<(usize, MutexGuard<'a, TenantMap>)>,
    /// Locked per event that names an instance (uncontended but for a
    /// snapshot's read).
    instances: &'a Mutex<InstanceMap>,
    store: &'a Store,
    now_ms: u64,
    slot: u32,
    /// The source the events come through (none until [`Self::set_source`]:
    /// such events count, but as nobody's word for detection).
    sources: SourceSet,
}

impl<'a> ShardWriter<'a> {
    /// Marks the events recorded from now on as coming through `source`.
    pub fn set_source(&mut self, source: Source) {
        self.sources = SourceSet::of(source);
    }

    /// The tenants of shard `index`, locked (the one held before released
    /// first: a writer never holds two).
    fn shard(&mut self, index: usize) -> &mut TenantMap {
        let held = match self.held.take() {
            Some((at, guard)) if at == index => (at, guard),
            other => {
                drop(other);
                (index, lock(&self.store.tenant_shards[index]))
            }
        };
        &mut self.held.insert(held).1
    }

    /// Adds one event to its tenant, or to the overflow bucket when the
    /// tenant is new and `max_tenants` are already tracked.
    pub fn record(&mut self, event: &Event<'_>) {
        let (now_ms, slot, sources) = (self.now_ms, self.slot, self.sources);
        let store: &'a Store = self.store;
        let tenant: &str = event.tenant.as_ref();
        let tenants = self.shard(store.shard_of(tenant));
        // The bucket's own name is nobody's (ingest refuses ids that begin
        // with `__`): never admitted, so never counted as a tenant.
        let bucket = tenant == OVERFLOW_TENANT;
        if let Some(acc) = tenants.get_mut(tenant).filter(|_| !bucket) {
            acc.record(event.kind, event.sample, now_ms, slot, sources);
            record_endpoint(store, acc, tenant, event);
        } else if !bucket && store.admit() {
            let acc = tenants.entry(tenant.into()).or_default();
            acc.record(event.kind, event.sample, now_ms, slot, sources);
            record_endpoint(store, acc, tenant, event);
        } else {
            // The overflow bucket keeps no endpoints: they would be anyone's.
            store.overflow_events.fetch_add(1, Ordering::Relaxed);
            let overflow = self.shard(store.shard_of(OVERFLOW_TENANT));
            let acc = match overflow.get_mut(OVERFLOW_TENANT) {
                Some(acc) => acc,
                None => overflow.entry(OVERFLOW_TENANT.into()).or_default(),
            };
            acc.record(event.kind, event.sample, now_ms, slot, sources);
        }
        if let Some(instance) = &event.instance {
            self.record_instance(instance, event.sample, now_ms);
        }
    }

    /// Counts the event's queries against `instance`.
    fn record_instance(&self, instance: &str, sample: Sample, now_ms: u64) {
        let queries = match sample {
            Sample::Query { weight, .. } => weight,
            _ => 0.0,
        };
        let mut instances = lock(self.instances);
        if let Some((total, seen)) = instances.get_mut(instance) {
            *total += queries;
            *seen = now_ms;
            return;
        }
        let name: &str = if self.store.admit_instance(instance) {
            instance
        } else {
            self.store.instances_folded.fetch_add(1, Ordering::Relaxed);
            OTHER_LABEL
        };
        let entry = instances.entry(name.into()).or_default();
        entry.0 += queries;
        entry.1 = now_ms;
    }
}

/// Whether `name` is in `admitted`, or was just added because fewer than
/// `cap` were: the one admission rule of tenants, endpoints and instances.
fn admit_under(admitted: &mut std::collections::HashSet<Box<str>>, name: &str, cap: usize) -> bool {
    if admitted.contains(name) {
        return true;
    }
    if admitted.len() < cap {
        admitted.insert(name.into());
        return true;
    }
    false
}

/// Counts a query of a tracked tenant against its endpoint, admitting the
/// endpoint under the tenant's cap or folding it into [`OTHER_LABEL`].
fn record_endpoint(store: &Store, acc: &mut TenantAccumulator, tenant: &str, event: &Event<'_>) {
    let (
        Some(endpoint),
        Sample::Query {
            duration_ms,
            error,
            weight,
            ..
        },
    ) = (&event.endpoint, event.sample)
    else {
        return;
    };
    let endpoint: &str = if acc.has_endpoint(endpoint) || store.admit_endpoint(tenant, endpoint) {
        endpoint
    } else {
        store.endpoints_folded.fetch_add(1, Ordering::Relaxed);
        OTHER_LABEL
    };
    acc.record_endpoint(endpoint, duration_ms, error, weight);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::borrow::Cow;

    proptest::proptest! {
        /// Ids from a small alphabet with NULs, long shared beginnings and
        /// ids that begin others: the 16-byte keys tie and mislead often.
        #[test]
        fn id_order_is_byte_order(
            ids in proptest::collection::vec("(tenant-0123456789ab)?[a\\x00\u{e9}]{0,20}", 0..60)
        ) {
            let mut keyed: Vec<_> = ids.iter().enumerate().map(|(at, id)| (id_key(id), at as u32)).collect();
            let order = id_order(&mut keyed, |at| ids[at].as_str());
            let ordered: Vec<&str> = order.iter().map(|at| ids[*at as usize].as_str()).collect();
            let mut expected: Vec<&str> = ids.iter().map(String::as_str).collect();
            expected.sort_unstable();
            proptest::prop_assert_eq!(&ordered, &expected);
            let mut permuted: Vec<&str> = ids.iter().map(String::as_str).collect();
            permute(&mut permuted, order);
            proptest::prop_assert_eq!(permuted, expected);
        }
    }

    #[test]
    fn endpoints_and_instances_stay_within_their_caps() {
        let (store, clock) = store(10, 4);
        for i in 0..100_000 {
            let endpoint = format!("GET /random/{i}");
            let instance = format!("pod-{i}");
            let mut event = query(if i % 2 == 0 { "a" } else { "b" }, QueryKind::Read, 5.0);
            event.endpoint = Some(Cow::Owned(endpoint));
            event.instance = Some(Cow::Owned(instance));
            store.writer(i).record(&event);
        }
        let snapshot = store.snapshot();
        for tenant in &snapshot.tenants {
            // 20 admitted, and __other__ for the rest, whatever the shard.
            assert_eq!(tenant.endpoints.len(), 21, "{}", tenant.tenant);
            let other = tenant
                .endpoints
                .iter()
                .find(|(e, _)| e == OTHER_LABEL)
                .unwrap();
            assert_eq!(other.1.queries, 50_000.0 - 20.0);
        }
        assert_eq!(snapshot.instances.len(), 501);
        assert_eq!(snapshot.endpoints_folded, 100_000 - 40);
        assert_eq!(snapshot.instances_folded, 100_000 - 500);
        let total: f64 = snapshot.instances.iter().map(|(_, q)| q).sum();
        assert_eq!(total, 100_000.0);
        // Instances silent for tenant_idle_ttl are forgotten, and room is made.
        clock.advance(Duration::from_secs(301));
        store.evict_idle();
        assert!(store.snapshot().instances.is_empty());
        let mut event = query("c", QueryKind::Read, 5.0);
        event.instance = Some(Cow::Borrowed("pod-new"));
        store.writer(0).record(&event);
        assert_eq!(store.snapshot().instances, [("pod-new".to_string(), 1.0)]);
    }

    #[test]
    fn a_schema_switch_is_neither_a_query_nor_database_time() {
        let (store, _) = store(10, 1);
        let switch = Event {
            tenant: Cow::Borrowed("a"),
            kind: QueryKind::Other,
            sample: Sample::SchemaSwitch {
                duration_ms: 2.0,
                weight: 1.0,
            },
            endpoint: None,
            instance: None,
        };
        let mut writer = store.writer(0);
        writer.record(&switch);
        writer.record(&query("a", QueryKind::Read, 10.0));
        drop(writer);
        let snapshot = store.snapshot();
        let a = &snapshot.tenants[0];
        assert_eq!(
            a.kinds[QueryKind::Read.index()].as_ref().unwrap().queries,
            1.0
        );
        assert!(a.kinds[QueryKind::Other.index()].is_none());
        assert_eq!(a.window_db_time_ms, 10.0);
        let switches = a.schema_switch.as_ref().unwrap();
        assert_eq!((switches.queries, switches.duration_sum_ms), (1.0, 2.0));
    }

    fn store(max_tenants: usize, shards: usize) -> (Store, Arc<ManualClock>) {
        let clock = Arc::new(ManualClock::default());
        let limits = StoreLimits {
            max_tenants,
            tenant_idle_ttl: Duration::from_secs(300),
            share_window: Duration::from_secs(60),
            max_endpoints_per_tenant: 20,
            max_instances: 500,
        };
        (Store::new(shards, limits, clock.clone()), clock)
    }

    fn query(tenant: &str, kind: QueryKind, duration_ms: f64) -> Event<'_> {
        Event {
            endpoint: None,
            instance: None,
            tenant: Cow::Borrowed(tenant),
            kind,
            sample: Sample::Query {
                duration_ms,
                rows: 2.0,
                error: false,
                weight: 1.0,
            },
        }
    }

    fn find<'a>(snapshot: &'a StoreSnapshot, tenant: &str) -> &'a TenantSnapshot {
        snapshot
            .tenants
            .iter()
            .find(|t| t.tenant == tenant)
            .expect("tenant present")
    }

    #[test]
    fn every_writer_adds_to_the_tenants_one_accumulator() {
        let (store, _) = store(10, 3);
        for shard in 0..3 {
            let mut writer = store.writer(shard);
            writer.record(&query("a", QueryKind::Read, 1.0));
            writer.record(&query("a", QueryKind::Write, 100.0));
        }
        let snapshot = store.snapshot();
        let a = find(&snapshot, "a");
        let read = a.kinds[0].as_ref().unwrap();
        assert_eq!(read.queries, 3.0);
        assert_eq!(read.rows, 6.0);
        assert_eq!(read.buckets[1], 3.0, "1 ms falls in the le=0.001 bucket");
        let write = a.kinds[1].as_ref().unwrap();
        assert_eq!(write.duration_sum_ms, 300.0);
        assert_eq!(write.buckets[7], 3.0, "100 ms falls in the le=0.1 bucket");
        assert!(a.kinds[2].is_none());
        assert_eq!(snapshot.tracked, 1);
    }

    #[test]
    fn writers_on_many_threads_lose_nothing_and_admit_no_more_than_the_cap() {
        let (store, _) = store(500, 4);
        std::thread::scope(|scope| {
            for thread in 0..4 {
                let store = &store;
                scope.spawn(move || {
                    for round in 0..50 {
                        let mut writer = store.writer(thread);
                        for i in 0..20 {
                            let tenant = format!("t{}", (round * 20 + i + thread * 7) % 600);
                            writer.record(&query(&tenant, QueryKind::Read, 1.0));
                        }
                    }
                });
            }
        });
        let snapshot = store.snapshot();
        assert_eq!(snapshot.tracked, 500);
        let counted: f64 = snapshot
            .tenants
            .iter()
            .map(|t| t.kinds[0].as_ref().map_or(0.0, |k| k.queries))
            .sum();
        assert_eq!(counted, 4.0 * 50.0 * 20.0);
        assert_eq!(
            snapshot.tenants.len(),
            501,
            "500 tenants and the overflow bucket"
        );
        let overflow = find(&snapshot, OVERFLOW_TENANT).kinds[0]
            .as_ref()
            .unwrap()
            .queries;
        assert_eq!(overflow, snapshot.overflow_events as f64);
        let names: Vec<&str> = snapshot.tenants.iter().map(|t| t.tenant.as_str()).collect();
        assert!(names.is_sorted(), "tenants in id order");
    }

    #[test]
    fn one_tenants_snapshot_is_the_full_snapshots_row() {
        let (store, _) = store(10, 2);
        store.writer(0).record(&query("a", QueryKind::Read, 300.0));
        store.writer(1).record(&query("b", QueryKind::Write, 100.0));
        store.writer(1).record(&query("a", QueryKind::Read, 100.0));
        let full = store.snapshot();
        for tenant in ["a", "b"] {
            assert_eq!(
                store.tenant_snapshot(tenant).as_ref(),
                Some(find(&full, tenant))
            );
        }
        assert_eq!(find(&full, "a").db_time_share, 0.8);
        assert!(store.tenant_snapshot("c").is_none());
    }

    #[test]
    fn after_a_peak_every_shard_has_room_for_its_share_and_churn_adds_none() {
        let (store, clock) = store(600, 2);
        let room = shard_room(600);
        let mut after_first = Vec::new();
        for round in 0..80 {
            let names: Vec<String> = (0..900).map(|i| format!("f{round}x{i}")).collect();
            let mut writer = store.writer(0);
            for name in &names {
                writer.record(&query(name, QueryKind::Read, 1.0));
            }
            drop(writer);
            clock.advance(Duration::from_secs(301));
            store.evict_idle();
            assert_eq!(store.tracked(), 0);
            let made = room_made(&store);
            assert!(made.iter().all(|c| *c >= room), "{made:?} < {room}");
            if round == 0 {
                after_first = made;
            } else {
                assert_no_table_grew(&store, &after_first, round);
            }
        }
    }

    fn room_made(store: &Store) -> Vec<usize> {
        store
            .room_made
            .iter()
            .map(|made| made.load(Ordering::Relaxed))
            .collect()
    }

    /// A table's reported capacity leaves its tombstones out, so it may
    /// read less than the room made; more is a table that grew.
    fn assert_no_table_grew(store: &Store, room_made: &[usize], round: usize) {
        for (shard, made) in store.tenant_shards.iter().zip(room_made) {
            let capacity = lock(shard).capacity();
            assert!(
                capacity <= *made,
                "round {round}: a table grew from {made} to {capacity}"
            );
        }
    }

    /// With a peak whose room nearly fills its tables' bucket count, and
    /// enough tenants per shard that evictions leave tombstones, the room
    /// is made once: once it was topped up at every eviction, and a few
    /// tombstones made the top-up double the table.
    #[test]
    fn room_made_for_a_peak_near_a_bucket_boundary_is_made_once() {
        const PEAK: usize = 52_000;
        let (store, clock) = store(PEAK, 1);
        let room = shard_room(PEAK);
        assert!(
            room > 3_500 && room <= 3_584,
            "{room}: just under 4,096 buckets' 3,584"
        );
        let mut after_first = Vec::new();
        for round in 0..4 {
            let mut writer = store.writer(0);
            for i in 0..PEAK {
                writer.record(&query(&format!("b{round}x{i}"), QueryKind::Read, 1.0));
            }
            drop(writer);
            clock.advance(Duration::from_secs(301));
            store.evict_idle();
            if round == 0 {
                after_first = room_made(&store);
                assert!(after_first.iter().all(|c| *c >= room));
            } else {
                assert_eq!(room_made(&store), after_first);
                assert_no_table_grew(&store, &after_first, round);
            }
        }
    }

    #[test]
    fn bucket_edges_are_inclusive_and_slow_queries_go_to_inf() {
        let (store, _) = store(10, 1);
        let mut writer = store.writer(0);
        writer.record(&query("a", QueryKind::Read, 0.5));
        writer.record(&query("a", QueryKind::Read, 0.0));
        writer.record(&query("a", QueryKind::Read, 30_000.0));
        writer.record(&query("a", QueryKind::Read, 30_000.1));
        drop(writer);
        let snapshot = store.snapshot();
        let buckets = &find(&snapshot, "a").kinds[0].as_ref().unwrap().buckets;
        assert_eq!(buckets[0], 2.0);
        assert_eq!(buckets[14], 1.0);
        assert_eq!(buckets[15], 1.0);
    }

    #[test]
    fn db_time_share_follows_the_sliding_window() {
        let (store, clock) = store(10, 2);
        store.writer(0).record(&query("a", QueryKind::Read, 300.0));
        store.writer(1).record(&query("b", QueryKind::Read, 100.0));
        let snapshot = store.snapshot();
        assert_eq!(find(&snapshot, "a").db_time_share, 0.75);
        assert_eq!(find(&snapshot, "b").db_time_share, 0.25);

        clock.advance(Duration::from_secs(30));
        store.writer(0).record(&query("b", QueryKind::Read, 300.0));
        let snapshot = store.snapshot();
        assert_eq!(find(&snapshot, "a").db_time_share, 300.0 / 700.0);

        // 61 s after the first events they have left the window.
        clock.advance(Duration::from_secs(31));
        let snapshot = store.snapshot();
        assert_eq!(find(&snapshot, "a").db_time_share, 0.0);
        assert_eq!(find(&snapshot, "b").db_time_share, 1.0);
        assert_eq!(snapshot.window_db_time_ms, 300.0);
        // Cumulative counters are not windowed.
        assert_eq!(find(&snapshot, "a").kinds[0].as_ref().unwrap().queries, 1.0);
    }

    #[test]
    fn the_window_remembers_which_sources_a_tenants_events_came_through() {
        let (store, clock) = store(10, 2);
        let mut udp = store.writer(0);
        udp.set_source(Source::Udp);
        udp.record(&query("a", QueryKind::Read, 300.0));
        udp.record(&query("b", QueryKind::Read, 1.0));
        drop(udp);
        let mut http = store.writer(1);
        http.set_source(Source::Http);
        http.record(&query("b", QueryKind::Read, 1.0));
        drop(http);
        // No source said: counted, but nobody's word.
        store.writer(0).record(&query("c", QueryKind::Read, 1.0));
        let snapshot = store.snapshot();
        let a = find(&snapshot, "a").window_sources;
        assert!(a.contains(Source::Udp) && !a.contains(Source::Http));
        let b = find(&snapshot, "b").window_sources;
        assert!(b.contains(Source::Udp) && b.contains(Source::Http));
        assert!(find(&snapshot, "c").window_sources.is_empty());

        // Only HTTP within the last window: the UDP events have left it.
        clock.advance(Duration::from_secs(59));
        let mut http = store.writer(0);
        http.set_source(Source::Http);
        http.record(&query("a", QueryKind::Read, 1.0));
        drop(http);
        clock.advance(Duration::from_secs(2));
        let snapshot = store.snapshot();
        assert_eq!(
            find(&snapshot, "a").window_sources,
            SourceSet::of(Source::Http)
        );
        assert!(find(&snapshot, "b").window_sources.is_empty());
    }

    #[test]
    fn tenants_beyond_the_cap_go_to_overflow() {
        let (store, _) = store(3, 2);
        for i in 0..10 {
            let name = format!("t{i}");
            store.writer(i).record(&query(&name, QueryKind::Read, 1.0));
        }
        // A tenant admitted earlier still lands on its own, on any shard.
        store.writer(1).record(&query("t0", QueryKind::Read, 1.0));
        let snapshot = store.snapshot();
        assert_eq!(snapshot.tracked, 3);
        assert_eq!(snapshot.overflow_events, 7);
        let overflow = find(&snapshot, OVERFLOW_TENANT);
        assert_eq!(overflow.kinds[0].as_ref().unwrap().queries, 7.0);
        assert_eq!(
            find(&snapshot, "t0").kinds[0].as_ref().unwrap().queries,
            2.0
        );
        assert_eq!(snapshot.tenants.len(), 4);
    }

    #[test]
    fn idle_tenants_are_evicted_everywhere_and_make_room() {
        let (store, clock) = store(2, 2);
        store.writer(0).record(&query("old", QueryKind::Read, 1.0));
        store.writer(1).record(&query("old", QueryKind::Read, 1.0));
        clock.advance(Duration::from_secs(200));
        store.writer(1).record(&query("busy", QueryKind::Read, 1.0));
        clock.advance(Duration::from_secs(100));
        store.writer(0).record(&query("busy", QueryKind::Read, 1.0));
        assert_eq!(store.evict_idle(), 1);
        let snapshot = store.snapshot();
        assert_eq!(snapshot.tracked, 1);
        assert_eq!(snapshot.evicted, 1);
        assert!(snapshot.tenants.iter().all(|t| t.tenant != "old"));
        // "busy" was seen 0 s ago by writer 0 and 100 s ago by writer 1: it stays whole.
        assert_eq!(
            find(&snapshot, "busy").kinds[0].as_ref().unwrap().queries,
            2.0
        );
        store.writer(0).record(&query("new", QueryKind::Read, 1.0));
        assert_eq!(store.snapshot().overflow_events, 0);
    }

    #[test]
    fn a_recent_snapshot_leaves_idle_tenants_out_whole_and_keeps_them() {
        let (store, clock) = store(10, 2);
        store
            .writer(0)
            .record(&query("sleepy", QueryKind::Read, 1.0));
        store
            .writer(1)
            .record(&query("sleepy", QueryKind::Read, 1.0));
        clock.advance(Duration::from_secs(500));
        // "sleepy" is back through one writer only: both writers' counts show.
        store
            .writer(1)
            .record(&query("sleepy", QueryKind::Read, 1.0));
        store.writer(0).record(&query("busy", QueryKind::Read, 1.0));
        let recent = store.snapshot_recent(Duration::from_secs(60));
        assert_eq!(
            find(&recent, "sleepy").kinds[0].as_ref().unwrap().queries,
            3.0
        );
        clock.advance(Duration::from_secs(61));
        store.writer(0).record(&query("busy", QueryKind::Read, 1.0));
        let recent = store.snapshot_recent(Duration::from_secs(60));
        let names: Vec<&str> = recent.tenants.iter().map(|t| t.tenant.as_str()).collect();
        assert_eq!(names, ["busy"]);
        assert_eq!(recent.tracked, 2);
        // Still in the store, whole, for every other reader.
        assert_eq!(
            find(&store.snapshot(), "sleepy").kinds[0]
                .as_ref()
                .unwrap()
                .queries,
            3.0
        );
    }

    /// An exposition snapshot given back lends its rows to the next one,
    /// which holds the same figures as a snapshot made without them; a
    /// third taken while the second is out gets rows of its own.
    #[test]
    fn a_recycled_snapshots_rows_are_filled_by_the_next() {
        let (store, _) = store(10, 2);
        for tenant in ["a", "b", "c"] {
            store.writer(0).record(&query(tenant, QueryKind::Read, 1.0));
        }
        let first = store.exposition_snapshot(None);
        let rows = first.tenants.as_ptr();
        store.recycle(first);
        let second = store.exposition_snapshot(None);
        assert_eq!(second.tenants.as_ptr(), rows, "the rows were not reused");
        let third = store.exposition_snapshot(Some(Duration::from_secs(60)));
        assert_ne!(third.tenants.as_ptr(), rows);
        assert_eq!(second.tenants, third.tenants);
        assert_eq!(second.tenants, store.snapshot().tenants);
        let names: Vec<&str> = second.tenants.iter().map(|t| t.tenant.as_str()).collect();
        assert_eq!(names, ["a", "b", "c"]);
    }

    /// A kept vector with over twice the room needed (grown for a flood
    /// since evicted) is let go, not held; one that fits is emptied.
    #[test]
    fn a_spare_grown_past_twice_the_room_is_let_go() {
        let mut grown: Vec<u64> = Vec::with_capacity(10_000);
        grown.push(1);
        let at = grown.as_ptr();
        let fresh = reused(grown, 100);
        assert_ne!(fresh.as_ptr(), at);
        assert!(fresh.is_empty() && fresh.capacity() >= 100 && fresh.capacity() < 10_000);
        let mut fitting: Vec<u64> = Vec::with_capacity(150);
        fitting.push(1);
        let at = fitting.as_ptr();
        let kept = reused(fitting, 100);
        assert_eq!((kept.as_ptr(), kept.len()), (at, 0));
        assert!(reused(kept, 120).capacity() >= 120);
    }

    #[test]
    fn rows_and_errors_samples() {
        let (store, _) = store(2, 1);
        let mut writer = store.writer(0);
        writer.record(&Event {
            endpoint: None,
            instance: None,
            tenant: Cow::Borrowed("a"),
            kind: QueryKind::Other,
            sample: Sample::Rows(5.0),
        });
        writer.record(&Event {
            endpoint: None,
            instance: None,
            tenant: Cow::Borrowed("a"),
            kind: QueryKind::Other,
            sample: Sample::Errors(2.0),
        });
        drop(writer);
        let snapshot = store.snapshot();
        let other = find(&snapshot, "a").kinds[2].clone().unwrap();
        assert_eq!((other.queries, other.rows, other.errors), (0.0, 5.0, 2.0));
    }
}
