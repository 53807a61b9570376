//! Every integration test in one test binary: each former `tests/x.rs` is a
//! module here, so the crate is linked once instead of once per file (the
//! pattern large Rust projects use to cut link time; see
//! docs/performance.md for the figures).
//!
//! Run one area with `cargo test --test it daemon::`. All modules share one
//! process: a test may not set process-wide state (environment variables,
//! the working directory, signal dispositions) or bind a fixed port; name
//! temporary files by test as well as by `std::process::id()`.

// Tests may unwrap: a failure there is the report.
#![allow(clippy::unwrap_used)]

#[path = "../support/mod.rs"]
mod support;

mod alerts;
mod api;
mod architecture;
mod auth;
mod client_examples;
mod daemon;
mod dashboards;
mod demo;
mod deploy;
mod deploy_guide;
mod e2e_prometheus;
mod fleet;
mod freshness;
mod guard;
mod ingest;
mod layouts;
mod monotonic;
mod negotiation;
mod openapi;
mod pgbouncer;
mod poisoned_figures;
mod postgres;
mod python_client;
mod ratelimit;
mod ratelimit_redis;
mod readme;
mod recipes;
mod rls;
mod slow_clients;
mod state;
mod tls_listener;
