//! What every module's settings type shares: the reload classification
//! ([`Reload`], derived with `#[derive(Reload)]` from `tenantwatch-macros`),
//! the collector of bad keys ([`Problems`]) that single-key checks write to,
//! and the serde helpers for values the file writes as text.
//!
//! Each module owns its settings type: it deserializes straight from its
//! TOML section (`deny_unknown_fields`, a `///` doc and the default next to
//! each field), checks its own keys in a `check` method, and marks with
//! `#[reload(live)]` the keys the daemon applies on SIGHUP. `config` only
//! reads the file, resolves what it names outside itself, and checks rules
//! across sections. This module imports nothing of the crate, so every
//! module may use it.

use std::fmt;
use std::time::Duration;

pub use tenantwatch_macros::Reload;

/// A settings type that knows which of its keys only a restart applies.
pub trait Reload {
    /// Pushes, as dotted keys under `prefix`, every restart-only setting
    /// whose value differs between `self` (running) and `new`.
    fn restart_changes(&self, new: &Self, prefix: &str, out: &mut Vec<String>);
    /// Pushes the dotted keys that a reload applies.
    fn live_keys(&self, prefix: &str, out: &mut Vec<String>);
}

/// `prefix.key`, or `key` at the top.
pub fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_owned()
    } else {
        format!("{prefix}.{key}")
    }
}

/// A list of sections (`[[targets]]`): an entry added or removed names the
/// list, a changed entry names its keys (`targets[1].poll_interval`).
impl<T: Reload + PartialEq> Reload for Vec<T> {
    fn restart_changes(&self, new: &Self, prefix: &str, out: &mut Vec<String>) {
        if self.len() != new.len() {
            if self != new {
                out.push(prefix.to_owned());
            }
            return;
        }
        for (i, (old, new)) in self.iter().zip(new).enumerate() {
            old.restart_changes(new, &format!("{prefix}[{i}]"), out);
        }
    }

    fn live_keys(&self, prefix: &str, out: &mut Vec<String>) {
        for (i, item) in self.iter().enumerate() {
            item.live_keys(&format!("{prefix}[{i}]"), out);
        }
    }
}

/// One bad key: its dotted name, the value given, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidKey {
    pub key: String,
    pub value: String,
    pub message: String,
}

impl fmt::Display for InvalidKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} = {}: {}", self.key, self.value, self.message)
    }
}

/// Collects every bad key instead of stopping at the first; each section's
/// `check` writes its own keys under the prefix it is given.
#[derive(Debug, Default)]
pub struct Problems {
    pub errors: Vec<InvalidKey>,
}

impl Problems {
    pub fn fail(&mut self, key: &str, value: impl fmt::Display, message: impl Into<String>) {
        self.errors.push(InvalidKey {
            key: key.to_owned(),
            value: value.to_string(),
            message: message.into(),
        });
    }

    /// `value` must lie in `[min, max]`.
    pub fn range(&mut self, key: &str, value: usize, min: usize, max: usize) {
        if value < min || value > max {
            self.fail(key, value, format!("must be between {min} and {max}"));
        }
    }

    /// A duration that must be longer than zero.
    pub fn positive(&mut self, key: &str, value: Duration) {
        if value.is_zero() {
            self.fail(
                key,
                format!("{:?}", humantime::format_duration(value).to_string()),
                "must be longer than zero",
            );
        }
    }

    /// A number that must be finite and inside `(min, max]`.
    pub fn finite_above(&mut self, key: &str, value: f64, min: f64, max: f64) {
        if !(value.is_finite() && value > min && value <= max) {
            self.fail(
                key,
                value,
                format!("must be a number above {min} and at most {max}"),
            );
        }
    }
}

/// serde helpers for `#[serde(with = "…")]`.
pub mod serde_text {
    /// Durations as the file writes them (`"10s"`, `"5m"`, `"250ms"`).
    pub use humantime_serde as duration;

    /// An address where `""` means "off": `Option<SocketAddr>`.
    pub mod optional_addr {
        use std::net::SocketAddr;

        use serde::{Deserialize, Deserializer, Serializer};

        pub fn deserialize<'de, D: Deserializer<'de>>(
            deserializer: D,
        ) -> Result<Option<SocketAddr>, D::Error> {
            let text = String::deserialize(deserializer)?;
            match text.trim() {
                "" => Ok(None),
                addr => addr.parse().map(Some).map_err(|err| {
                    serde::de::Error::custom(format!(
                        "{addr:?} is not an IP:port address ({err}); \"\" turns it off"
                    ))
                }),
            }
        }

        pub fn serialize<S: Serializer>(
            addr: &Option<SocketAddr>,
            serializer: S,
        ) -> Result<S::Ok, S::Error> {
            match addr {
                Some(addr) => serializer.collect_str(addr),
                None => serializer.serialize_str(""),
            }
        }
    }
}

/// A name for a label value (`target`, `pgbouncer`): 1 or more ASCII
/// letters, digits and `_-.`.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}
