//! `GET /api/v1/targets`: each target's health and size.

use std::collections::HashMap;
use std::time::SystemTime;

use serde::Serialize;

use crate::store::{PollErrorKind, TargetStatus, TargetStatuses};

/// One target for `GET /api/v1/targets`.
#[derive(Debug, Serialize)]
pub struct TargetView {
    pub name: String,
    /// `host:port/dbname`.
    pub address: String,
    pub up: bool,
    pub last_success_unix: Option<f64>,
    pub last_error: Option<PollErrorKind>,
    pub server_version: Option<String>,
    /// A standby (`pg_is_in_recovery()`).
    pub in_recovery: Option<bool>,
    /// The standbys streaming from it, with their replay lag.
    pub replicas: Vec<ReplicaView>,
    pub max_connections: Option<u64>,
    pub reserved_connections: Option<u64>,
    pub connections: u64,
    pub size_bytes: u64,
    pub tenants: usize,
    pub watched_databases: Vec<String>,
    /// `group`: its name, and the expected tenants with no schema or
    /// database here (at most 100).
    pub group: Option<String>,
    pub missing_tenants: Vec<String>,
}

/// One standby of a target.
#[derive(Debug, Serialize)]
pub struct ReplicaView {
    pub name: String,
    pub lag_seconds: f64,
    pub lag_bytes: f64,
}

pub(crate) fn unix(time: SystemTime) -> f64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

pub fn target_views(statuses: &TargetStatuses, targets: &[TargetStatus]) -> Vec<TargetView> {
    targets
        .iter()
        .map(|t| {
            let mut tenants: HashMap<&str, ()> = HashMap::new();
            if let Some(a) = &t.activity {
                tenants.extend(a.tenants.keys().map(|k| (k.as_str(), ())));
            }
            tenants.extend(t.tenant_sizes().map(|(k, _)| (k.as_str(), ())));
            let size = t.tenant_sizes().map(|(_, size)| size).sum();
            TargetView {
                name: t.name.clone(),
                address: t.description.clone(),
                up: t.up,
                last_success_unix: t.last_success.map(unix),
                last_error: t.last_error,
                server_version: t.server_version.clone(),
                in_recovery: t.in_recovery,
                replicas: t
                    .replicas
                    .iter()
                    .flat_map(|r| r.iter())
                    .map(|(name, (seconds, bytes))| ReplicaView {
                        name: name.clone(),
                        lag_seconds: *seconds,
                        lag_bytes: *bytes,
                    })
                    .collect(),
                max_connections: t.max_connections,
                reserved_connections: t.reserved_connections,
                connections: t.connections_in_use(),
                size_bytes: size,
                tenants: tenants.len(),
                watched_databases: t.watched_databases.clone(),
                group: t.group.clone(),
                missing_tenants: statuses.missing_tenants(t).into_iter().take(100).collect(),
            }
        })
        .collect()
}
