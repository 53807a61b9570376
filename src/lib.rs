//! tenantwatch: an observability sidecar and metrics daemon for multi-tenant
//! PostgreSQL.
//!
//! Data flows one way: **sources → tenant store → readers**.
//!
//! - sources: [`ingest`] turns UDP datagrams and `POST /v1/events` bodies
//!   (NDJSON and DogStatsD lines) into typed [`event::Event`]s;
//! - [`store`] aggregates events per tenant and kind, sharded per writer and
//!   bounded by `max_tenants`;
//! - readers: [`metrics`] exposes the store on `/metrics`; they never touch a
//!   socket or the database.
//!
//! [`config`] owns the TOML file and its validation, [`daemon`] owns start-up
//! and graceful shutdown, [`server`] the HTTP listener, [`telemetry`] logging.
//! `main.rs` only parses the command line and calls [`daemon::run`], so tests
//! run the real daemon in-process with [`daemon::Daemon::start`].

#![forbid(unsafe_code)]

pub mod config;
pub mod daemon;
pub mod event;
pub mod ingest;
pub mod metrics;
pub mod server;
pub mod store;
pub mod telemetry;

pub use config::Config;
pub use daemon::{Daemon, run};
