//! Parsing of the read API's URLs (with `form_urlencoded` and
//! `percent-encoding`), and the query string of `GET /api/v1/tenants` into
//! a typed [`ListQuery`] over the [`SortField`]s a list can be sorted by.

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};

/// Largest page.
pub const MAX_LIMIT: usize = 1000;
const DEFAULT_LIMIT: usize = 100;

/// The numeric figures of a row: what a list can be sorted by, in CSV
/// column order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortField {
    Queries,
    Errors,
    ErrorRatio,
    Rows,
    DbTimeShare,
    Connections,
    IdleInTransactionMaxSeconds,
    SchemaSizeBytes,
    LiveTuples,
    DeadTuples,
    EffectiveQps,
}

impl SortField {
    pub const ALL: [SortField; 11] = [
        SortField::Queries,
        SortField::Errors,
        SortField::ErrorRatio,
        SortField::Rows,
        SortField::DbTimeShare,
        SortField::Connections,
        SortField::IdleInTransactionMaxSeconds,
        SortField::SchemaSizeBytes,
        SortField::LiveTuples,
        SortField::DeadTuples,
        SortField::EffectiveQps,
    ];

    /// The field's name: the JSON key, the CSV column, the `sort` value.
    pub fn as_str(self) -> &'static str {
        match self {
            SortField::Queries => "queries",
            SortField::Errors => "errors",
            SortField::ErrorRatio => "error_ratio",
            SortField::Rows => "rows",
            SortField::DbTimeShare => "db_time_share",
            SortField::Connections => "connections",
            SortField::IdleInTransactionMaxSeconds => "idle_in_transaction_max_seconds",
            SortField::SchemaSizeBytes => "schema_size_bytes",
            SortField::LiveTuples => "live_tuples",
            SortField::DeadTuples => "dead_tuples",
            SortField::EffectiveQps => "effective_qps",
        }
    }

    pub fn parse(text: &str) -> Option<SortField> {
        SortField::ALL.into_iter().find(|f| f.as_str() == text)
    }
}

/// What a tenant list is sorted by.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SortKey {
    /// The tenant id, ascending by default.
    Tenant,
    /// A figure, descending by default.
    Field(SortField),
}

impl SortKey {
    pub fn parse(text: &str) -> Option<SortKey> {
        match text {
            "tenant" => Some(SortKey::Tenant),
            // What people ask for (and what issue 31 named): the share is
            // the only db-time figure a row has.
            "db_time" => Some(SortKey::Field(SortField::DbTimeShare)),
            _ => SortField::parse(text).map(SortKey::Field),
        }
    }
}

/// A bad query parameter: its name and what is wrong (a 400).
#[derive(Debug, Clone, PartialEq)]
pub struct BadParameter {
    pub name: String,
    pub detail: String,
}

/// Parsed `GET /api/v1/tenants` parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct ListQuery {
    pub sort: SortKey,
    pub descending: bool,
    pub limit: usize,
    pub cursor: Option<(f64, String)>,
    pub target: Option<String>,
    pub flagged: Option<bool>,
    pub csv: bool,
}

/// Decodes `%XX` in a path segment; `+` stays a `+` there (RFC 3986). A `%`
/// not followed by two hex digits stays as it is; bytes that are not UTF-8
/// become U+FFFD.
pub fn url_decode_path(text: &str) -> String {
    percent_decode_str(text).decode_utf8_lossy().into_owned()
}

/// What [`url_encode`] leaves as it is: RFC 3986's unreserved characters.
const UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// Encodes everything but unreserved characters as `%XX`: safe in a query
/// component and in a path segment.
pub fn url_encode(text: &str) -> String {
    utf8_percent_encode(text, UNRESERVED).to_string()
}

/// Parses the query string of `GET /api/v1/tenants`.
pub fn parse_list_query(query: Option<&str>, accept_csv: bool) -> Result<ListQuery, BadParameter> {
    let bad = |name: &str, detail: String| BadParameter {
        name: name.into(),
        detail,
    };
    let mut q = ListQuery {
        sort: SortKey::Field(SortField::DbTimeShare),
        descending: true,
        limit: DEFAULT_LIMIT,
        cursor: None,
        target: None,
        flagged: None,
        csv: accept_csv,
    };
    let mut order_given = None;
    // `application/x-www-form-urlencoded`: `+` is a space, `%XX` a byte.
    for (key, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        let value = value.into_owned();
        match key.as_ref() {
            "sort" => {
                q.sort = SortKey::parse(&value).ok_or_else(|| {
                    let names: Vec<&str> = SortField::ALL.iter().map(|f| f.as_str()).collect();
                    bad(
                        "sort",
                        format!(
                            "{value:?} is not a field; use tenant or one of {}",
                            names.join(", ")
                        ),
                    )
                })?;
            }
            "order" => match value.as_str() {
                "asc" => order_given = Some(false),
                "desc" => order_given = Some(true),
                _ => return Err(bad("order", format!("{value:?}: use asc or desc"))),
            },
            "limit" => {
                q.limit = value
                    .parse()
                    .ok()
                    .filter(|l| (1..=MAX_LIMIT).contains(l))
                    .ok_or_else(|| {
                        bad(
                            "limit",
                            format!("{value:?}: use a number from 1 to {MAX_LIMIT}"),
                        )
                    })?;
            }
            "cursor" => {
                let (number, tenant) = value
                    .split_once('|')
                    .ok_or_else(|| bad("cursor", "not a cursor this API returned".into()))?;
                let number: f64 = number
                    .parse()
                    .map_err(|_| bad("cursor", "not a cursor this API returned".into()))?;
                q.cursor = Some((number, tenant.to_owned()));
            }
            "target" => q.target = Some(value),
            "flagged" => {
                q.flagged = Some(match value.as_str() {
                    "true" => true,
                    "false" => false,
                    _ => return Err(bad("flagged", format!("{value:?}: use true or false"))),
                })
            }
            "format" => match value.as_str() {
                "csv" => q.csv = true,
                "json" => q.csv = false,
                _ => return Err(bad("format", format!("{value:?}: use json or csv"))),
            },
            other => return Err(bad(other, "unknown parameter".into())),
        }
    }
    // Names sort ascending by default, figures descending (the biggest first).
    q.descending = order_given.unwrap_or(q.sort != SortKey::Tenant);
    Ok(q)
}
