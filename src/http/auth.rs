//! Who may read and who may spend: an optional write token for `/v1/*`, an
//! optional read token for `/metrics` and `/api/v1/*` (the write token reads
//! too), both compared in constant time and swappable on reload, and a
//! [`Secret`] type that never prints.

use std::fmt;
use std::sync::Arc;

use arc_swap::ArcSwap;
use subtle::ConstantTimeEq;

use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Request, Response, StatusCode};

use super::AppState;
use super::reply::{Body, problem};

/// A secret that never prints.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// The tokens in force.
#[derive(Debug, Clone, Default)]
pub struct Tokens {
    /// Required by `POST /v1/*` when set.
    pub write: Option<Secret>,
    /// Required by `/metrics` and `/api/v1/*` when set (the write token is
    /// accepted there too).
    pub read: Option<Secret>,
    /// Tokens bound to tenants, for `POST /v1/ratelimit/check`.
    pub callers: Vec<crate::ratelimit::Caller>,
}

/// Why a rate-limit check may not go ahead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpendDenied {
    /// No token, or an unknown one: 401.
    Unauthenticated,
    /// A caller's token, for a tenant it is not bound to: 403.
    Forbidden,
}

/// The tokens, replaced as a whole on reload. Read on every request: an
/// `ArcSwap`, so readers on different cores never write a shared line.
#[derive(Debug, Default)]
pub struct SharedTokens(ArcSwap<Tokens>);

impl SharedTokens {
    pub fn new(tokens: Tokens) -> SharedTokens {
        SharedTokens(ArcSwap::from_pointee(tokens))
    }

    pub fn get(&self) -> arc_swap::Guard<Arc<Tokens>> {
        self.0.load()
    }

    pub fn set(&self, tokens: Tokens) {
        self.0.store(Arc::new(tokens));
    }
}

/// The token of `Authorization: Bearer <token>` (the scheme matched
/// case-insensitively, as RFC 9110 says).
fn bearer(headers: &HeaderMap) -> Option<&str> {
    bearer_token(headers.get(header::AUTHORIZATION)?.as_bytes())
}

/// The token of an `Authorization` value, `Bearer <token>`.
pub fn bearer_token(authorization: &[u8]) -> Option<&str> {
    // Visible ASCII only, as `HeaderValue::to_str` accepts.
    let value = std::str::from_utf8(authorization).ok()?;
    if !value
        .bytes()
        .all(|b| b == b'\t' || (b' '..=b'~').contains(&b))
    {
        return None;
    }
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

/// Whether the request may spend (`POST /v1/*`).
pub(super) fn authorized(state: &AppState, req: &Request<Incoming>) -> bool {
    let tokens = state.listener.tokens.get();
    let Some(expected) = &tokens.write else {
        return true;
    };
    bearer(req.headers())
        .is_some_and(|given| constant_time_eq(given.as_bytes(), expected.expose().as_bytes()))
}

/// Whether the request may spend `tenant`'s quota: the write token spends
/// any; a caller's token only its tenants; with neither configured, anyone.
pub(super) fn may_spend(
    state: &AppState,
    headers: &HeaderMap,
    tenant: &str,
) -> Result<(), SpendDenied> {
    may_spend_as(state, bearer(headers), tenant)
}

/// [`may_spend`] for a request that gave `given` as its bearer token.
pub(super) fn may_spend_as(
    state: &AppState,
    given: Option<&str>,
    tenant: &str,
) -> Result<(), SpendDenied> {
    state.listener.tokens.get().may_spend(given, tenant)
}

impl Tokens {
    /// Whether a request that gave `given` as its bearer token may spend
    /// `tenant`'s quota: the write token spends any; a caller's token only
    /// its tenants; with neither configured, anyone. The HTTP check and the
    /// gRPC service (`crate::rls`) ask the same.
    pub fn may_spend(&self, given: Option<&str>, tenant: &str) -> Result<(), SpendDenied> {
        let tokens = self;
        if tokens.write.is_none() && tokens.callers.is_empty() {
            return Ok(());
        }
        let Some(given) = given else {
            return Err(SpendDenied::Unauthenticated);
        };
        let writer = tokens
            .write
            .as_ref()
            .is_some_and(|w| constant_time_eq(given.as_bytes(), w.expose().as_bytes()));
        if writer {
            return Ok(());
        }
        // Every caller's token is compared, so timing does not tell which matched.
        let caller = tokens
            .callers
            .iter()
            .filter(|c| constant_time_eq(given.as_bytes(), c.token.as_bytes()))
            .fold(None, |found, c| found.or(Some(c)));
        match caller {
            Some(caller) if caller.may_check(tenant) => Ok(()),
            Some(_) => Err(SpendDenied::Forbidden),
            None => Err(SpendDenied::Unauthenticated),
        }
    }
}

/// Whether the request may read (`/metrics`, `/api/v1/*`): with a read
/// token, it or the write token; without one, anyone.
pub(super) fn may_read(state: &AppState, req: &Request<Incoming>) -> bool {
    let tokens = state.listener.tokens.get();
    let Some(read) = &tokens.read else {
        return true;
    };
    let Some(given) = bearer(req.headers()) else {
        return false;
    };
    let read_ok = constant_time_eq(given.as_bytes(), read.expose().as_bytes());
    let write_ok = tokens
        .write
        .as_ref()
        .is_some_and(|w| constant_time_eq(given.as_bytes(), w.expose().as_bytes()));
    read_ok | write_ok
}

pub(super) fn unauthorized() -> Response<Body> {
    let mut response = problem(
        StatusCode::UNAUTHORIZED,
        "this endpoint requires Authorization: Bearer <token>",
    );
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"tenantwatch\""),
    );
    response
}

/// Compares in time that depends only on the expected token's length, so
/// response time says nothing about how much of a guessed token was right,
/// nor how long the real one is relative to it. `subtle` compares the bytes;
/// its slice comparison returns at once on a length mismatch, so the lengths
/// are compared on their own and the bytes are always compared over the
/// expected token's length (against itself when the guess is shorter).
fn constant_time_eq(given: &[u8], expected: &[u8]) -> bool {
    let same_length = (given.len() as u64).ct_eq(&(expected.len() as u64));
    let compared = given.get(..expected.len()).unwrap_or(expected);
    (same_length & compared.ct_eq(expected)).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_eq_compares() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
        assert!(!constant_time_eq(b"abcd", b"abc"));
        assert!(!constant_time_eq(b"", b"abc"));
        assert!(constant_time_eq(b"", b""));
        assert!(!constant_time_eq(b"ab", b"abc"));
        assert!(!constant_time_eq(b"abc\0", b"abc"));
    }
}
