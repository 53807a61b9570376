//! The read endpoints: flags, advice, and the planners' API under
//! `/api/v1/`. Each takes the readers' snapshots and serializes their view.

use std::collections::HashMap;
use std::sync::PoisonError;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{self, HeaderValue};
use hyper::http::request::Parts;
use hyper::{Response, StatusCode};
use serde::Serialize;

use super::ReadState;
use super::endpoint::TENANT_PATH_PREFIX;
use super::reply::{Body, json, problem};
use crate::api::{self, DetailSources};
use crate::capacity::view::{TenantShare, capacity_view};
use crate::detect::fleet::{FleetStatus, Scope};
use crate::detect::{Advice, Flag, read_judgement};

/// The heavy views, built on a blocking thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum View {
    Tenants,
    Tenant,
    Targets,
    Capacity,
}

pub(super) fn build(state: &ReadState, view: View, req: &Parts) -> Response<Body> {
    match view {
        View::Tenants => tenants(state, req),
        View::Tenant => tenant(state, req),
        View::Targets => targets(state),
        View::Capacity => capacity(state),
    }
}

#[derive(Serialize)]
struct FlagsReply<'a> {
    flags: Vec<FlagView<'a>>,
}

/// A reply that says whom it answers for: the fleet (every live replica's
/// figures, through Redis) or this replica alone.
#[derive(Serialize)]
struct Scoped<'a, T> {
    scope: Scope,
    /// Replicas whose figures the answer rests on.
    replicas: usize,
    #[serde(flatten)]
    reply: &'a T,
}

fn scoped<'a, T>(fleet: &FleetStatus, reply: &'a T) -> Scoped<'a, T> {
    Scoped {
        scope: fleet.scope,
        replicas: fleet.replicas,
        reply,
    }
}

/// A flag with its tenant's tier.
#[derive(Serialize)]
struct FlagView<'a> {
    #[serde(flatten)]
    flag: &'a Flag,
    tier: Option<&'a str>,
}

#[derive(Serialize)]
struct AdviceReply<'a> {
    /// This instance's advice, then what other instances shared (Redis).
    advice: Vec<&'a Advice>,
}

#[derive(Serialize)]
struct TargetsReply {
    targets: Vec<api::TargetView>,
    pgbouncers: Vec<api::PgBouncerView>,
}

pub(super) fn flags(state: &ReadState) -> Response<Body> {
    let judgement = read_judgement(&state.judgement);
    let policy = state.rate_limits.policy();
    let flags = judgement
        .flags
        .iter()
        .map(|flag| FlagView {
            flag,
            tier: policy.tier_of(&flag.tenant),
        })
        .collect();
    json(
        StatusCode::OK,
        &scoped(&judgement.fleet, &FlagsReply { flags }),
    )
}

pub(super) fn advice(state: &ReadState) -> Response<Body> {
    let judgement = read_judgement(&state.judgement);
    json(
        StatusCode::OK,
        &AdviceReply {
            advice: judgement
                .advice
                .iter()
                .chain(&judgement.shared_advice)
                .collect(),
        },
    )
}

#[derive(Serialize)]
struct GuardReply {
    /// Newest first.
    actions: Vec<crate::store::guard::GuardRecord>,
}

/// `GET /api/v1/guard`: the last guard actions and their results.
pub(super) fn guard(state: &ReadState) -> Response<Body> {
    let actions = state
        .guard_log
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .recent();
    json(StatusCode::OK, &GuardReply { actions })
}

fn targets(state: &ReadState) -> Response<Body> {
    let targets = state.targets.snapshot();
    json(
        StatusCode::OK,
        &TargetsReply {
            targets: api::target_views(&state.targets, &targets),
            pgbouncers: api::pgbouncer_views(&state.pgbouncers.snapshot()),
        },
    )
}

/// Every tenant's row, joined from the store, the targets, the flags and the
/// rate limits.
fn rows(state: &ReadState, targets: &[crate::store::TargetStatus]) -> Vec<api::TenantRow> {
    let summaries = state.store.summaries();
    let judgement = read_judgement(&state.judgement);
    api::tenant_rows(&summaries, targets, &judgement, &state.rate_limits)
}

fn capacity(state: &ReadState) -> Response<Body> {
    let targets = state.targets.snapshot();
    let rows = rows(state, &targets);
    let shares: HashMap<&str, TenantShare> = rows
        .iter()
        .map(|r| {
            let share = TenantShare {
                db_time_share: r.db_time_share,
                targets: r.targets.len(),
            };
            (&*r.tenant, share)
        })
        .collect();
    let histories = state
        .histories
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    let pgbouncers = state.pgbouncers.snapshot();
    let view = capacity_view(
        &targets,
        &pgbouncers,
        &histories,
        &shares,
        rows.len(),
        &state.api,
    );
    let fleet = read_judgement(&state.judgement).fleet.clone();
    json(StatusCode::OK, &scoped(&fleet, &view))
}

fn tenant(state: &ReadState, req: &Parts) -> Response<Body> {
    let tenant = api::url_decode_path(
        req.uri
            .path()
            .strip_prefix(TENANT_PATH_PREFIX)
            .unwrap_or_default(),
    );
    let targets = state.targets.snapshot();
    let events = state.store.tenant_snapshot(&tenant);
    let judgement = read_judgement(&state.judgement);
    let summaries = state.store.summaries();
    let rows = api::tenant_rows(&summaries, &targets, &judgement, &state.rate_limits);
    let histories = state
        .tenant_histories
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    let sources = DetailSources {
        rows: &rows,
        events: events.as_ref(),
        targets: &targets,
        pgbouncers: &state.pgbouncers.snapshot(),
        flags: &judgement.flags,
        limits: &state.rate_limits,
        history: histories.get(&tenant),
    };
    match api::tenant_detail(&tenant, &sources) {
        Some(detail) => json(StatusCode::OK, &detail),
        None => problem(
            StatusCode::NOT_FOUND,
            &format!("no tenant {tenant:?} is tracked"),
        ),
    }
}

fn tenants(state: &ReadState, req: &Parts) -> Response<Body> {
    let accept_csv = req
        .headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/csv"));
    let query = match api::parse_list_query(req.uri.query(), accept_csv) {
        Ok(query) => query,
        Err(bad) => {
            let mut response = problem(
                StatusCode::BAD_REQUEST,
                &format!("parameter {}: {}", bad.name, bad.detail),
            );
            if let Ok(value) = HeaderValue::from_str(&bad.name) {
                response.headers_mut().insert("x-invalid-parameter", value);
            }
            return response;
        }
    };
    let targets = state.targets.snapshot();
    let summaries = state.store.summaries();
    // One judgement for the page's flags and its scope.
    let judgement = read_judgement(&state.judgement);
    let page = api::tenant_page(summaries, &targets, &judgement, &state.rate_limits, &query);
    if !query.csv {
        return json(StatusCode::OK, &scoped(&judgement.fleet, &page));
    }
    let mut response = Response::new(Full::new(Bytes::from(api::csv(&page.tenants))));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/csv; charset=utf-8"),
    );
    if let Some(cursor) = page
        .next_cursor
        .as_deref()
        .and_then(|c| HeaderValue::from_str(c).ok())
    {
        response.headers_mut().insert("x-next-cursor", cursor);
    }
    response
}
