//! The stores: the one place where sources leave data and readers find it.
//!
//! - [`tenants`]: per-tenant, per-kind figures aggregated from events,
//!   sharded per writer and bounded by `max_tenants` ([`Store`]);
//! - [`native`]: the sparse exponential latency histogram each tenant
//!   keeps beside its classic buckets ([`NativeHistogram`]);
//! - [`targets`]: what the PostgreSQL collectors last saw of each target
//!   ([`TargetStatus`], shared through [`TargetStatuses`]);
//! - [`ingest_stats`]: what the ingest sources received and refused;
//! - [`pgbouncers`]: what the PgBouncer pollers last saw of each admin
//!   console ([`PgBouncerStatus`], shared through [`PgBouncerStatuses`]);
//! - [`guard`]: guard orders (end a flagged tenant's offending session) and
//!   what became of them.
//!
//! Sources ([`crate::ingest`], [`crate::collect`]) write here and read
//! nothing else; readers (metrics, detect, ratelimit, capacity, api) read
//! here through snapshots and never reach a source. The store imports only
//! the shared vocabulary ([`crate::event`]).
//!
//! What a reader *derives* from the stores stays with the reader that owns
//! its types and is shared read-only from there: the detector's judgement
//! (`crate::detect::SharedJudgement`: flags, advice, baselines) and the
//! capacity histories (`crate::capacity::SharedTargetHistories`). Moving
//! them here would make the store import the readers' vocabulary (rule
//! names, severities, growth fits) and turn the one-way flow around.
//!
//! The guard spans the three layers on purpose: [`crate::detect`] decides
//! an order (a reader), [`guard`] here queues it and keeps what came of it,
//! and [`crate::collect`]'s poller of that target carries it out on its own
//! session (a source: the only code that talks to PostgreSQL).

pub mod guard;
pub mod ingest_stats;
pub mod native;
pub mod pgbouncers;
pub mod targets;
pub mod tenants;

pub use ingest_stats::{IngestStats, Source};
pub use native::NativeHistogram;
pub use pgbouncers::{
    MAX_POOL_LABEL_VALUES, PgBouncerSnapshot, PgBouncerStatus, PgBouncerStatuses, PoolDatabase,
    PoolFigures, PoolTraffic, SharedPgBouncerStatus, TenantPools, lock_pgbouncer,
};
pub use targets::{
    ActivitySnapshot, CollectorName, Cumulative, DatabaseStats, Judged, JudgedActivity, Offence,
    Offender, PollErrorKind, SchemaDetail, SchemaTotals, SharedStatus, TargetStatus,
    TargetStatuses, TenantActivity, TenantStatements, TopStatement, lock,
};
pub use tenants::*;
