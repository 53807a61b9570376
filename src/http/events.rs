//! `POST /v1/events`: the HTTP ingest source. The body is parsed into one
//! store shard of the HTTP pool; the reply lists which lines failed and why.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use hyper::body::Incoming;
use hyper::header;
use hyper::{Request, Response, StatusCode};
use serde::Serialize;

use super::auth::{authorized, unauthorized};
use super::body::{BodyError, read_body};
use super::reply::{Body, busy, json, problem};
use super::{AppState, IngestState};
use crate::event::RejectReason;
use crate::ingest::{LineLimits, ingest_payload};
use crate::store::{IngestStats, Source};

/// Bodies up to this size are parsed inline (microseconds); larger ones on
/// a blocking thread.
const INLINE_BODY_BYTES: usize = 64 * 1024;

/// At most this many refused lines are listed in a `/v1/events` reply; the
/// count of all of them is always given.
const MAX_LISTED_REJECTS: usize = 100;

/// Media types `POST /v1/events` accepts. Each line's format is detected by
/// its first byte, so all of them mean the same.
const EVENT_MEDIA_TYPES: [&str; 6] = [
    "application/x-ndjson",
    "application/ndjson",
    "application/jsonl",
    "application/json",
    "text/plain",
    "application/octet-stream",
];

#[derive(Serialize)]
struct EventsReply {
    accepted: u64,
    rejected_count: u64,
    rejected: Vec<RejectedLine>,
}

#[derive(Serialize)]
struct RejectedLine {
    line: usize,
    reason: &'static str,
    detail: String,
}

pub(super) async fn post_events(state: &Arc<AppState>, req: Request<Incoming>) -> Response<Body> {
    if !authorized(state, &req) {
        return unauthorized();
    }
    if let Some(content_type) = req.headers().get(header::CONTENT_TYPE) {
        let media_type = content_type
            .to_str()
            .unwrap_or("")
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if !EVENT_MEDIA_TYPES.contains(&media_type.as_str()) {
            return problem(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "send application/x-ndjson (NDJSON events) or text/plain (DogStatsD lines)",
            );
        }
    }
    let max = state.listener.ingest_limits.max_body_bytes;
    let body = match read_body(
        req.into_body(),
        max,
        state.listener.server.body_read_timeout,
    )
    .await
    {
        Ok(body) => body,
        Err(BodyError::TooLarge) => return body_too_large(&state.ingest.stats, max),
        Err(BodyError::TimedOut) => {
            return problem(
                StatusCode::REQUEST_TIMEOUT,
                "the request body was not received within server.body_read_timeout",
            );
        }
        Err(BodyError::Unreadable) => {
            return problem(
                StatusCode::BAD_REQUEST,
                "the request body could not be read",
            );
        }
    };

    if body.len() <= INLINE_BODY_BYTES {
        return record(&state.ingest, state.listener.ingest_limits.lines, &body);
    }
    // A large body takes milliseconds to parse: do it on a blocking thread
    // under a heavy-work permit, never on an async worker.
    let Ok(permit) = state.listener.heavy.clone().try_acquire_owned() else {
        return busy();
    };
    let state = state.clone();
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        record(&state.ingest, state.listener.ingest_limits.lines, &body)
    })
    .await
    .unwrap_or_else(|_| problem(StatusCode::INTERNAL_SERVER_ERROR, "ingest failed"))
}

/// Parses and records a body into one store shard of the HTTP pool.
fn record(state: &IngestState, lines: LineLimits, body: &[u8]) -> Response<Body> {
    let (first, count) = state.http_shards;
    let shard = first + state.next_shard.fetch_add(1, Ordering::Relaxed) % count;
    let mut rejected = Vec::new();
    let outcome = {
        let mut writer = state.store.writer(shard);
        ingest_payload(
            body,
            lines,
            Source::Http,
            &mut writer,
            &state.stats,
            |line, reject| {
                if rejected.len() < MAX_LISTED_REJECTS {
                    rejected.push(RejectedLine {
                        line,
                        reason: reject.reason.as_str(),
                        detail: reject.detail.into_owned(),
                    });
                }
            },
        )
    };
    let status = if outcome.accepted > 0 {
        StatusCode::ACCEPTED
    } else {
        StatusCode::BAD_REQUEST
    };
    json(
        status,
        &EventsReply {
            accepted: outcome.accepted,
            rejected_count: outcome.rejected,
            rejected,
        },
    )
}

fn body_too_large(stats: &IngestStats, max: usize) -> Response<Body> {
    stats.add_received(Source::Http, 1);
    stats.add_rejected(Source::Http, RejectReason::BodyTooLarge);
    problem(
        StatusCode::PAYLOAD_TOO_LARGE,
        &format!("the body is larger than ingest.max_body_bytes ({max} bytes)"),
    )
}
