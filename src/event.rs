//! The typed tenant query event that every ingest source produces, and the
//! bounded set of reasons an input line can be refused for.
//!
//! Parsers borrow from the receive buffer wherever they can: a tenant id is a
//! `Cow` that only owns its bytes when the wire format escaped them.

use std::borrow::Cow;
use std::fmt;

/// Longest tenant id accepted, in bytes. PostgreSQL identifiers stop at 63
/// bytes; the margin leaves room for ids composed from several parts.
pub const MAX_TENANT_ID_BYTES: usize = 128;

/// Name of the tenant that collects events for tenants beyond `max_tenants`.
/// Ids starting with `__` are reserved, so no client can send it directly.
pub const OVERFLOW_TENANT: &str = "__overflow__";

/// What kind of work a query did. The index is stable and used for arrays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum QueryKind {
    Read = 0,
    Write = 1,
    Other = 2,
}

impl QueryKind {
    pub const ALL: [QueryKind; 3] = [QueryKind::Read, QueryKind::Write, QueryKind::Other];

    pub fn as_str(self) -> &'static str {
        match self {
            QueryKind::Read => "read",
            QueryKind::Write => "write",
            QueryKind::Other => "other",
        }
    }

    pub fn parse(text: &str) -> Option<QueryKind> {
        match text {
            "read" => Some(QueryKind::Read),
            "write" => Some(QueryKind::Write),
            "other" => Some(QueryKind::Other),
            _ => None,
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// What one accepted line contributes to a tenant's figures.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sample {
    /// One query (or `weight` queries, after a `|@rate` sample rate) that took
    /// `duration_ms` and returned or touched `rows` rows.
    Query {
        duration_ms: f64,
        rows: f64,
        error: bool,
        weight: f64,
    },
    /// A number of rows reported on its own (DogStatsD `tenantwatch.rows`).
    Rows(f64),
    /// A number of failed queries reported on their own (DogStatsD
    /// `tenantwatch.errors`).
    Errors(f64),
    /// The time to switch a session to the tenant (`SET search_path`, a
    /// `SET ROLE`): kept apart, never counted as a query nor as database
    /// time.
    SchemaSwitch { duration_ms: f64, weight: f64 },
}

/// One tenant query event, borrowed from the input where possible.
#[derive(Debug, Clone, PartialEq)]
pub struct Event<'a> {
    pub tenant: Cow<'a, str>,
    pub kind: QueryKind,
    pub sample: Sample,
    /// The application's endpoint (route) that ran the query, if given.
    pub endpoint: Option<Cow<'a, str>>,
    /// The application instance (pod) that sent it, if given.
    pub instance: Option<Cow<'a, str>>,
}

/// Why a line (or a whole datagram or body) was refused. This is a metric
/// label, so the set is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectReason {
    InvalidUtf8,
    Malformed,
    MissingField,
    InvalidTenant,
    InvalidKind,
    InvalidDuration,
    InvalidValue,
    InvalidSampleRate,
    UnknownMetric,
    UnsupportedType,
    LineTooLong,
    DatagramTooLarge,
    BodyTooLarge,
    /// An `endpoint` or `instance` that cannot be a label value.
    InvalidLabel,
    /// A UDP datagram from a sender outside `ingest.udp_allow` (refused
    /// whole, before it is parsed).
    SourceNotAllowed,
}

impl RejectReason {
    pub const ALL: [RejectReason; 15] = [
        RejectReason::InvalidUtf8,
        RejectReason::Malformed,
        RejectReason::MissingField,
        RejectReason::InvalidTenant,
        RejectReason::InvalidKind,
        RejectReason::InvalidDuration,
        RejectReason::InvalidValue,
        RejectReason::InvalidSampleRate,
        RejectReason::UnknownMetric,
        RejectReason::UnsupportedType,
        RejectReason::LineTooLong,
        RejectReason::DatagramTooLarge,
        RejectReason::BodyTooLarge,
        RejectReason::InvalidLabel,
        RejectReason::SourceNotAllowed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::InvalidUtf8 => "invalid_utf8",
            RejectReason::Malformed => "malformed",
            RejectReason::MissingField => "missing_field",
            RejectReason::InvalidTenant => "invalid_tenant",
            RejectReason::InvalidKind => "invalid_kind",
            RejectReason::InvalidDuration => "invalid_duration",
            RejectReason::InvalidValue => "invalid_value",
            RejectReason::InvalidSampleRate => "invalid_sample_rate",
            RejectReason::UnknownMetric => "unknown_metric",
            RejectReason::UnsupportedType => "unsupported_type",
            RejectReason::LineTooLong => "line_too_long",
            RejectReason::DatagramTooLarge => "datagram_too_large",
            RejectReason::BodyTooLarge => "body_too_large",
            RejectReason::InvalidLabel => "invalid_label",
            RejectReason::SourceNotAllowed => "source_not_allowed",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A refused line: the bounded reason (for metrics) and a short detail for
/// the HTTP reply. Details are static on the hot path; only JSON syntax
/// errors carry serde's message.
#[derive(Debug, Clone, PartialEq)]
pub struct Reject {
    pub reason: RejectReason,
    pub detail: Cow<'static, str>,
}

impl Reject {
    pub fn new(reason: RejectReason, detail: &'static str) -> Reject {
        Reject {
            reason,
            detail: Cow::Borrowed(detail),
        }
    }
}

/// Longest query duration accepted: one day. Anything longer is a unit
/// mistake (seconds or microseconds sent as milliseconds), not a query.
pub const MAX_DURATION_MS: f64 = 86_400_000.0;

/// Largest row count one event may report, and largest value of one
/// `tenantwatch.rows` or `tenantwatch.errors` count: a trillion. With the
/// sample-rate floor (at most x1000 weight), one line adds at most 1e15,
/// so no sum of accepted events leaves the finite range in any lifetime.
pub const MAX_COUNT: f64 = 1e12;

/// Checks a count (rows, errors): finite, not negative, at most
/// [`MAX_COUNT`].
pub fn validate_count(value: f64) -> Result<f64, Reject> {
    if !(value.is_finite() && value >= 0.0) {
        return Err(Reject::new(
            RejectReason::InvalidValue,
            "count must be a finite non-negative number",
        ));
    }
    if value > MAX_COUNT {
        return Err(Reject::new(
            RejectReason::InvalidValue,
            "count is larger than 1e12",
        ));
    }
    Ok(value)
}

/// Checks a duration in milliseconds: finite, not negative, at most a day.
pub fn validate_duration_ms(duration_ms: f64) -> Result<f64, Reject> {
    if !duration_ms.is_finite() {
        return Err(Reject::new(
            RejectReason::InvalidDuration,
            "duration is not a finite number",
        ));
    }
    if duration_ms < 0.0 {
        return Err(Reject::new(
            RejectReason::InvalidDuration,
            "duration is negative",
        ));
    }
    if duration_ms > MAX_DURATION_MS {
        return Err(Reject::new(
            RejectReason::InvalidDuration,
            "duration is longer than one day",
        ));
    }
    Ok(duration_ms)
}

/// Longest `endpoint` or `instance` accepted, in bytes.
pub const MAX_LABEL_BYTES: usize = 128;

/// Checks an `endpoint` or `instance` value: 1 to 128 bytes of printable
/// ASCII (a route like `GET /api/v1/users/{id}`, a pod name), no `"` or
/// `\\`, not starting with `__` (tenantwatch's `__other__`).
pub fn validate_label(value: &str) -> Result<(), Reject> {
    let printable = |b: u8| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\';
    if value.is_empty()
        || value.len() > MAX_LABEL_BYTES
        || value.starts_with("__")
        || !value.bytes().all(printable)
    {
        return Err(Reject::new(
            RejectReason::InvalidLabel,
            "endpoint and instance must be 1 to 128 printable ASCII characters, without \" or \\, not starting with __",
        ));
    }
    Ok(())
}

/// Checks a tenant id: 1 to 128 bytes of ASCII letters, digits and `_-.:@/`,
/// not starting with `__` (reserved for tenantwatch's own buckets).
pub fn validate_tenant(tenant: &str) -> Result<(), Reject> {
    if tenant.is_empty() {
        return Err(Reject::new(RejectReason::InvalidTenant, "tenant is empty"));
    }
    if tenant.len() > MAX_TENANT_ID_BYTES {
        return Err(Reject::new(
            RejectReason::InvalidTenant,
            "tenant is longer than 128 bytes",
        ));
    }
    if tenant.starts_with("__") {
        return Err(Reject::new(
            RejectReason::InvalidTenant,
            "tenant ids starting with __ are reserved",
        ));
    }
    let allowed =
        |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':' | b'@' | b'/');
    if !tenant.bytes().all(allowed) {
        return Err(Reject::new(
            RejectReason::InvalidTenant,
            "tenant may only contain ASCII letters, digits and _-.:@/",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_validation() {
        assert!(validate_tenant("clinic1").is_ok());
        assert!(validate_tenant("acme.core-eu_1").is_ok());
        assert!(validate_tenant("").is_err());
        assert!(validate_tenant("__overflow__").is_err());
        assert!(validate_tenant("a b").is_err());
        assert!(validate_tenant("a\"b").is_err());
        assert!(validate_tenant(&"x".repeat(129)).is_err());
        assert!(validate_tenant(&"x".repeat(128)).is_ok());
    }

    #[test]
    fn duration_validation() {
        assert_eq!(validate_duration_ms(0.0), Ok(0.0));
        assert!(validate_duration_ms(-0.1).is_err());
        assert!(validate_duration_ms(f64::NAN).is_err());
        assert!(validate_duration_ms(f64::INFINITY).is_err());
        assert!(validate_duration_ms(MAX_DURATION_MS + 1.0).is_err());
    }

    #[test]
    fn reason_indexes_match_all() {
        for (i, reason) in RejectReason::ALL.iter().enumerate() {
            assert_eq!(reason.index(), i);
        }
        for (i, kind) in QueryKind::ALL.iter().enumerate() {
            assert_eq!(kind.index(), i);
        }
    }
}
