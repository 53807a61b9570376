//! Parsing of the read API's URLs: percent-decoding, and the query string
//! of `GET /api/v1/tenants` into a typed [`ListQuery`].

use super::tenants::SortField;

/// Largest page.
pub const MAX_LIMIT: usize = 1000;
const DEFAULT_LIMIT: usize = 100;

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
        if text == "tenant" {
            return Some(SortKey::Tenant);
        }
        SortField::parse(text).map(SortKey::Field)
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

/// Decodes `%XX` and `+` (a space) in a query-string component.
pub fn url_decode(text: &str) -> String {
    percent_decode(text, true)
}

/// Decodes `%XX` in a path segment; `+` stays a `+` there (RFC 3986).
pub fn url_decode_path(text: &str) -> String {
    percent_decode(text, false)
}

fn hex(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        b'A'..=b'F' => Some(digit - b'A' + 10),
        _ => None,
    }
}

/// `%` followed by two hex digits is a byte; any other `%` stays as it is.
fn percent_decode(text: &str, plus_is_space: bool) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' if plus_is_space => out.push(b' '),
            b'%' => {
                let byte = bytes
                    .get(i + 1)
                    .and_then(|h| hex(*h))
                    .zip(bytes.get(i + 2).and_then(|l| hex(*l)));
                match byte {
                    Some((high, low)) => {
                        out.push(high << 4 | low);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Encodes everything but unreserved characters as `%XX`.
pub fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
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
    for pair in query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = url_decode(value);
        match key {
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
