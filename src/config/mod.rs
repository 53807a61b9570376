//! Configuration: the TOML file, environment overrides and validation.
//!
//! [`FileConfig`] (in [`mod@file`]) mirrors the TOML file exactly
//! (`deny_unknown_fields`, every key optional, durations as strings such as
//! `"10s"`). [`Config`] is the validated runtime form: one settings value per
//! module, each type owned by the module that runs on it (the HTTP server's
//! [`ServerSettings`], ingest's [`IngestSettings`], a target's
//! [`TargetConfig`], the detector's [`DetectSettings`], the rate limiter's
//! [`RatePolicy`], capacity's [`CapacitySettings`]). This module only reads
//! the file and assembles them, reporting every bad key at once with its
//! value.
//!
//! Environment variables override file keys:
//! `TENANTWATCH__SECTION__KEY=value` (for example
//! `TENANTWATCH__SERVER__LISTEN=0.0.0.0:9645`), and `TENANTWATCH_AUTH_TOKEN`
//! supplies the bearer token without a file. The environment is an argument
//! ([`Config::load_with_env`]), so tests never touch the process's.

pub mod file;
mod validate;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use file::*;

use crate::attribution::Attribution;
use crate::capacity::CapacitySettings;
use crate::collect::TargetConfig;
use crate::detect::DetectSettings;
use crate::http::ServerSettings;
use crate::ingest::IngestSettings;
use crate::ratelimit::RatePolicy;
use crate::telemetry::LogFormat;

/// Environment variable holding the bearer token for `/v1/*`.
pub const AUTH_TOKEN_ENV: &str = "TENANTWATCH_AUTH_TOKEN";
/// Environment variable holding the bearer token for `/metrics` and `/api/v1/*`.
pub const READ_TOKEN_ENV: &str = "TENANTWATCH_READ_TOKEN";
/// Prefix of environment variables that override file keys.
pub const ENV_OVERRIDE_PREFIX: &str = "TENANTWATCH__";

/// The validated runtime configuration: each module's settings.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerSettings,
    pub ingest: IngestSettings,
    pub log_format: LogFormat,
    pub targets: Vec<TargetConfig>,
    pub pgbouncers: Vec<crate::collect::pgbouncer::PgBouncerConfig>,
    /// `tenants.expected_file`: tenants that must exist on every target of
    /// a group. Re-read on SIGHUP.
    pub expected_tenants: std::sync::Arc<std::collections::BTreeSet<String>>,
    pub attribution: Attribution,
    pub detect: DetectSettings,
    pub ratelimit: RatePolicy,
    /// Limiters unused this long are dropped.
    pub ratelimit_idle_ttl: Duration,
    /// Callers bound to tenants (`[ratelimit.callers]`).
    pub callers: Vec<crate::ratelimit::Caller>,
    /// `ratelimit.backend = "redis"`: the shared store; `None` keeps the
    /// limiters in this instance.
    pub ratelimit_redis: Option<crate::ratelimit::RedisSettings>,
    pub state: crate::state::StateSettings,
    pub api: CapacitySettings,
    /// `[metrics]`: how `/metrics` shows the per-tenant figures.
    pub metrics: crate::metrics::ExpositionSettings,
}

impl Config {
    /// The tokens the listener enforces: write, read, and the callers'.
    pub fn tokens(&self) -> crate::http::Tokens {
        crate::http::Tokens {
            callers: self.callers.clone(),
            ..self.server.tokens()
        }
    }

    /// The keys whose value differs between `self` (running) and `new` that
    /// only a restart applies: reload takes quotas, detection rules and
    /// tokens, and names each of these in a warning.
    pub fn restart_only_changes(&self, new: &Config) -> Vec<&'static str> {
        let (a, b) = (self, new);
        let (s, t) = (&a.server, &b.server);
        let (i, j) = (&a.ingest, &b.ingest);
        [
            ("server.listen", s.listen != t.listen),
            (
                "server.max_connections",
                s.max_connections != t.max_connections,
            ),
            (
                "server.header_read_timeout",
                s.header_read_timeout != t.header_read_timeout,
            ),
            (
                "server.body_read_timeout",
                s.body_read_timeout != t.body_read_timeout,
            ),
            (
                "server.shutdown_grace",
                s.shutdown_grace != t.shutdown_grace,
            ),
            (
                "server.shutdown_delay",
                s.shutdown_delay != t.shutdown_delay,
            ),
            (
                "server.allow_unauthenticated",
                s.allow_unauthenticated != t.allow_unauthenticated,
            ),
            ("server.tls_cert_file", s.tls.is_some() != t.tls.is_some()),
            ("server.write_timeout", s.write_timeout != t.write_timeout),
            (
                "server.request_timeout",
                s.request_timeout != t.request_timeout,
            ),
            (
                "server.max_heavy_requests",
                s.max_heavy_requests != t.max_heavy_requests,
            ),
            (
                "server.metrics_max_age",
                s.metrics_max_age != t.metrics_max_age,
            ),
            (
                "metrics.histogram_by_kind",
                a.metrics.histogram_by_kind != b.metrics.histogram_by_kind,
            ),
            (
                "metrics.latency_buckets",
                a.metrics.latency_buckets != b.metrics.latency_buckets,
            ),
            ("ingest.udp_listen", i.udp_listen != j.udp_listen),
            ("ingest.udp_receivers", i.udp_receivers != j.udp_receivers),
            (
                "ingest.udp_recv_buffer_bytes",
                i.udp_recv_buffer_bytes != j.udp_recv_buffer_bytes,
            ),
            (
                "ingest.max_datagram_bytes",
                i.max_datagram_bytes != j.max_datagram_bytes,
            ),
            (
                "ingest.max_body_bytes",
                i.max_body_bytes != j.max_body_bytes,
            ),
            (
                "ingest.max_line_bytes",
                i.max_line_bytes != j.max_line_bytes,
            ),
            (
                "ingest.min_sample_rate",
                i.min_sample_rate != j.min_sample_rate,
            ),
            ("ingest.max_tenants", i.max_tenants != j.max_tenants),
            (
                "ingest.tenant_idle_ttl",
                i.tenant_idle_ttl != j.tenant_idle_ttl,
            ),
            ("ingest.share_window", i.share_window != j.share_window),
            (
                "ingest.max_endpoints_per_tenant",
                i.max_endpoints_per_tenant != j.max_endpoints_per_tenant,
            ),
            ("ingest.max_instances", i.max_instances != j.max_instances),
            ("log.format", a.log_format != b.log_format),
            // Debug forms compare every field; they are never logged.
            (
                "targets",
                format!("{:?}", a.targets) != format!("{:?}", b.targets),
            ),
            (
                "pgbouncers",
                format!("{:?}", a.pgbouncers) != format!("{:?}", b.pgbouncers),
            ),
            (
                "tenants.rules",
                format!("{:?}", a.attribution) != format!("{:?}", b.attribution),
            ),
            (
                "ratelimit.idle_ttl",
                a.ratelimit_idle_ttl != b.ratelimit_idle_ttl,
            ),
            (
                "ratelimit.backend",
                a.ratelimit_redis.is_some() != b.ratelimit_redis.is_some(),
            ),
            (
                "ratelimit.redis",
                a.ratelimit_redis.is_some()
                    && b.ratelimit_redis.is_some()
                    && a.ratelimit_redis != b.ratelimit_redis,
            ),
            ("api", a.api != b.api),
            ("state", a.state != b.state),
        ]
        .into_iter()
        .filter_map(|(key, changed)| changed.then_some(key))
        .collect()
    }
}

impl TryFrom<FileConfig> for Config {
    type Error = ConfigError;

    /// Validates a file as [`Config::load`] does, with an empty environment:
    /// files it names (tokens, passwords, CAs) are read, but `password_env`
    /// has no variable to find.
    fn try_from(file: FileConfig) -> Result<Config, ConfigError> {
        validate::assemble(&file, &[])
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

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("failed to read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("failed to parse {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid configuration:\n{}", .0.iter().map(|e| format!("  {e}")).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<InvalidKey>),
}

impl Config {
    /// Reads, overrides from the process environment and validates `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Config::load_with_env(path, std::env::vars())
    }

    /// As [`Config::load`], with the environment given (for tests).
    pub fn load_with_env(
        path: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::from_toml_with_env(&text, path, env)
    }

    /// Parses TOML text, applies environment overrides, validates.
    pub fn from_toml_with_env(
        text: &str,
        path: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let parse_error = |message: String| ConfigError::Parse {
            path: path.to_owned(),
            message,
        };
        let env: Vec<(String, String)> = env.into_iter().collect();
        let overrides: Vec<(Vec<String>, &str)> = env
            .iter()
            .filter_map(|(key, value)| {
                let rest = key.strip_prefix(ENV_OVERRIDE_PREFIX)?;
                let path = rest.split("__").map(str::to_ascii_lowercase).collect();
                Some((path, value.as_str()))
            })
            .collect();
        let mut table: toml::Table =
            toml::from_str(text).map_err(|e| parse_error(describe_toml_error(&e, text)))?;
        let original = table.clone();
        let mut unset = Vec::new();
        expand_env(&mut table, &env, "", &mut unset);
        if !unset.is_empty() {
            return Err(ConfigError::Invalid(unset));
        }
        let file: FileConfig = if overrides.is_empty() && table == original {
            // Straight from the text, so that errors name the line.
            toml::from_str(text).map_err(|e| parse_error(describe_toml_error(&e, text)))?
        } else {
            for (key_path, value) in &overrides {
                apply_override(&mut table, key_path, value).map_err(parse_error)?;
            }
            table.try_into().map_err(|e: toml::de::Error| {
                parse_error(format!(
                    "after environment expansion and overrides: {}",
                    redact(e.message(), text)
                ))
            })?
        };
        validate::assemble(&file, &env)
    }
}

/// Replaces `${NAME}` in every string value of `table` (at any depth) with
/// the variable `NAME` of `env`, so that one file serves every pod
/// (`name = "${POD_NAME}"`); `$${` writes a literal `${`. A variable that is
/// not set is an invalid key, named with the variable.
fn expand_env(
    table: &mut toml::Table,
    env: &[(String, String)],
    prefix: &str,
    unset: &mut Vec<InvalidKey>,
) {
    for (key, value) in table.iter_mut() {
        let path = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        expand_value(value, env, &path, unset);
    }
}

fn expand_value(
    value: &mut toml::Value,
    env: &[(String, String)],
    path: &str,
    unset: &mut Vec<InvalidKey>,
) {
    match value {
        toml::Value::String(text) if text.contains('$') => {
            let (expanded, missing) = expand_text(text, env);
            for name in missing {
                unset.push(InvalidKey {
                    key: path.to_owned(),
                    value: format!("${{{name}}}"),
                    message: format!("the environment variable {name} is not set"),
                });
            }
            *text = expanded;
        }
        toml::Value::Table(table) => expand_env(table, env, path, unset),
        toml::Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                expand_value(item, env, &format!("{path}[{i}]"), unset);
            }
        }
        _ => {}
    }
}

/// `text` with each `${NAME}` replaced, and the names that were not set.
/// Anything else with a `$` (`$x`, an unclosed `${`) is left as written.
fn expand_text(text: &str, env: &[(String, String)]) -> (String, Vec<String>) {
    let mut out = String::with_capacity(text.len());
    let mut missing = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(escaped) = after.strip_prefix("${") {
            out.push_str("${");
            rest = escaped;
            continue;
        }
        let name = after
            .strip_prefix('{')
            .and_then(|inner| inner.split_once('}'))
            .map(|(name, _)| name)
            .filter(|name| {
                let mut bytes = name.bytes();
                bytes
                    .next()
                    .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
                    && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
            });
        match name {
            Some(name) => {
                match env.iter().find(|(key, _)| key == name) {
                    Some((_, value)) => out.push_str(value),
                    None => missing.push(name.to_owned()),
                }
                rest = &after[name.len() + 2..];
            }
            None => {
                out.push('$');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    (out, missing)
}

/// A TOML error as "line L, column C: message", without the source line
/// that `Display` quotes (it can be a DSN with its password), and with every
/// password-looking value of the file redacted from the message.
fn describe_toml_error(err: &toml::de::Error, text: &str) -> String {
    let message = redact(err.message(), text);
    match err.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let line_start = before.rfind('\n').map_or(0, |i| i + 1);
            let column = before.len() - line_start + 1;
            // The key is named (it is no secret); its value is not quoted.
            let source_line = text[line_start..].lines().next().unwrap_or_default();
            match source_line.split_once('=') {
                Some((key, _)) if !key.trim().is_empty() && !key.contains('"') => format!(
                    "line {line}, column {column}, key {}: {message}",
                    key.trim()
                ),
                _ => format!("line {line}, column {column}: {message}"),
            }
        }
        None => message,
    }
}

/// `message` with every password that `text` holds replaced: libpq
/// `password=...` values and URL `user:password@` parts.
pub fn redact(message: &str, text: &str) -> String {
    let mut out = message.to_owned();
    for secret in secrets_in(text) {
        if !secret.is_empty() {
            out = out.replace(&secret, "<redacted>");
        }
    }
    out
}

fn secrets_in(text: &str) -> Vec<String> {
    let mut secrets = Vec::new();
    for (at, _) in text.match_indices("password") {
        let rest = text[at + "password".len()..].trim_start();
        let Some(rest) = rest.strip_prefix('=') else {
            continue;
        };
        let rest = rest.trim_start().trim_start_matches(['\'', '"']);
        let end = rest
            .find(|c: char| c.is_whitespace() || c == '\'' || c == '"')
            .unwrap_or(rest.len());
        secrets.push(rest[..end].to_owned());
    }
    for (at, _) in text.match_indices("://") {
        let rest = &text[at + 3..];
        let end = rest
            .find(|c: char| c.is_whitespace() || c == '"' || c == '\'' || c == '/')
            .unwrap_or(rest.len());
        if let Some((userinfo, _)) = rest[..end].rsplit_once('@')
            && let Some((_, password)) = userinfo.split_once(':')
        {
            secrets.push(password.to_owned());
        }
    }
    secrets
}

fn apply_override(table: &mut toml::Table, path: &[String], raw: &str) -> Result<(), String> {
    let key = path.join(".");
    let (last, parents) = path
        .split_last()
        .ok_or_else(|| format!("empty environment override key {key}"))?;
    let mut current = table;
    for part in parents {
        let entry = current
            .entry(part.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        current = entry
            .as_table_mut()
            .ok_or_else(|| format!("environment override {key}: {part} is not a table"))?;
    }
    // Numbers and booleans keep their type; everything else is a string.
    let value = if let Ok(n) = raw.parse::<i64>() {
        toml::Value::Integer(n)
    } else if let Ok(b) = raw.parse::<bool>() {
        toml::Value::Boolean(b)
    } else {
        toml::Value::String(raw.to_owned())
    };
    current.insert(last.clone(), value);
    Ok(())
}

impl Config {
    /// The configuration with every default, listening where the defaults say.
    pub fn defaults() -> Config {
        validate::assemble(&FileConfig::default(), &[]).expect("the defaults are valid")
    }

    /// A few lines for `check-config`: what the daemon would do.
    pub fn summary(&self) -> String {
        let udp = self
            .ingest
            .udp_listen
            .map(|a| a.to_string())
            .unwrap_or_else(|| "off".into());
        let mut summary = format!(
            "http listener: {}\n\
             auth token for /v1/*: {}\n\
             udp listener: {} ({} receiver thread(s), {} byte receive buffer requested)\n\
             limits: {} tenants, {} bytes per datagram, {} bytes per body, {} bytes per line\n\
             tenant idle ttl: {}, db time share window: {}\n",
            self.server.listen,
            if self.server.auth_token.is_some() {
                "required"
            } else {
                "not required"
            },
            udp,
            self.ingest.udp_receivers,
            self.ingest.udp_recv_buffer_bytes,
            self.ingest.max_tenants,
            self.ingest.max_datagram_bytes,
            self.ingest.max_body_bytes,
            self.ingest.max_line_bytes,
            humantime::format_duration(self.ingest.tenant_idle_ttl),
            humantime::format_duration(self.ingest.share_window),
        );
        for target in &self.targets {
            summary.push_str(&format!(
                "target {}: {} every {}, schema statistics every {}, sizes every {}, databases {:?}\n",
                target.name,
                target.description,
                humantime::format_duration(target.poll_interval),
                humantime::format_duration(target.stats_interval),
                humantime::format_duration(target.size_interval),
                target.databases,
            ));
        }
        if self.targets.is_empty() {
            summary.push_str("targets: none (events only)\n");
        }
        for pgbouncer in &self.pgbouncers {
            summary.push_str(&format!(
                "pgbouncer {}: {} every {}\n",
                pgbouncer.name,
                pgbouncer.description,
                humantime::format_duration(pgbouncer.poll_interval),
            ));
        }
        summary.push_str(&format!(
            "tenant rules: {}\n",
            self.attribution.rules().len()
        ));
        let guard = &self.detect.guard;
        summary.push_str(&format!(
            "guard: {}{}\n",
            match guard.mode {
                crate::detect::GuardMode::Off => "off",
                crate::detect::GuardMode::DryRun => "dry_run",
                crate::detect::GuardMode::Enforce => "enforce",
            },
            if guard.mode == crate::detect::GuardMode::Off {
                String::new()
            } else {
                format!(
                    " (after {}, at most {} per minute)",
                    humantime::format_duration(guard.grace),
                    guard.max_actions_per_minute
                )
            }
        ));
        summary.push_str(&match &self.ratelimit_redis {
            None => "rate limits: local (each instance its own quotas)\n".to_string(),
            Some(redis) => format!(
                "rate limits: redis, shared (prefix {:?}, timeout {}, fail_mode {}{}, instance {:?})\n",
                redis.key_prefix,
                humantime::format_duration(redis.timeout),
                redis.fail_mode.as_str(),
                match redis.fail_mode {
                    crate::ratelimit::FailMode::Local =>
                        format!(" at 1/{} of each quota", redis.expected_instances),
                    _ => String::new(),
                },
                redis.instance,
            ),
        });
        summary
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::Secret;

    fn load(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        Config::from_toml_with_env(text, Path::new("test.toml"), env)
    }

    #[test]
    fn empty_file_gives_the_defaults() {
        let config = load("", &[]).unwrap();
        assert_eq!(config.server.listen, "127.0.0.1:9645".parse().unwrap());
        assert_eq!(
            config.ingest.udp_listen,
            Some("127.0.0.1:8125".parse().unwrap())
        );
        assert_eq!(config.ingest.max_tenants, 10_000);
        assert_eq!(config.ingest.share_window, Duration::from_secs(60));
        assert!(config.server.auth_token.is_none());
    }

    #[test]
    fn unknown_keys_are_refused_by_name() {
        let err = load("[server]\nlisten_addr = \"x\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("listen_addr"), "{err}");
        let err = load("[sever]\n", &[]).unwrap_err().to_string();
        assert!(err.contains("sever"), "{err}");
    }

    #[test]
    fn every_bad_key_is_reported_with_its_value() {
        let err = load(
            "[server]\nlisten = \"nowhere\"\nshutdown_grace = \"soon\"\n\
             [ingest]\nmax_tenants = 0\nmax_datagram_bytes = 100000\nshare_window = \"5s\"\n\
             [log]\nformat = \"xml\"\n",
            &[],
        )
        .unwrap_err();
        let ConfigError::Invalid(errors) = err else {
            panic!("expected validation errors, got {err}");
        };
        let keys: Vec<&str> = errors.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "server.listen",
                "server.shutdown_grace",
                "ingest.max_datagram_bytes",
                "ingest.max_tenants",
                "ingest.share_window",
                "log.format"
            ]
        );
        assert_eq!(errors[0].value, "\"nowhere\"");
        assert_eq!(errors[3].value, "0");
    }

    #[test]
    fn the_redis_backend_is_validated_and_its_url_never_shown() {
        assert!(load("", &[]).unwrap().ratelimit_redis.is_none());
        let err = load("[ratelimit]\nbackend = \"redis\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("ratelimit.redis.url"), "{err}");
        let err = load(
            "[ratelimit]\nbackend = \"memcached\"\n[ratelimit.redis]\nfail_mode = \"maybe\"\n",
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("ratelimit.backend"), "{err}");
        let err = load(
            "[ratelimit]\nbackend = \"redis\"\n[ratelimit.redis]\nurl = \"rediss://:hunter2@cache:6380\"\n\
             fail_mode = \"maybe\"\nexpected_instances = 0\ntimeout = \"soon\"\n",
            &[],
        )
        .unwrap_err()
        .to_string();
        for key in [
            "ratelimit.redis.url",
            "ratelimit.redis.fail_mode",
            "ratelimit.redis.expected_instances",
            "ratelimit.redis.timeout",
        ] {
            assert!(err.contains(key), "{key}: {err}");
        }
        assert!(!err.contains("hunter2"), "{err}");
        let config = load(
            "[server]\nlisten = \"127.0.0.1:9700\"\n[ratelimit]\nbackend = \"redis\"\n",
            &[(
                "TENANTWATCH__RATELIMIT__REDIS__URL",
                "redis://:hunter2@cache:6379/2",
            )],
        )
        .unwrap();
        let redis = config.ratelimit_redis.expect("the redis backend");
        assert_eq!(redis.url, "redis://:hunter2@cache:6379/2");
        assert_eq!(redis.key_prefix, "tenantwatch:rl:");
        assert_eq!(redis.timeout, Duration::from_millis(50));
        assert_eq!(redis.fail_mode, crate::ratelimit::FailMode::Local);
        assert!(redis.instance.ends_with(":9700"), "{}", redis.instance);
        assert!(!format!("{redis:?}").contains("hunter2"));
    }

    #[test]
    fn the_guard_is_validated() {
        let config = load("", &[]).unwrap();
        assert_eq!(config.detect.guard.mode, crate::detect::GuardMode::Off);
        let err = load(
            "[guard]\nmode = \"always\"\nmax_actions_per_minute = 0\nexclude_applications = [\"(\"]\n\
             [detect.rules.db_time_hog]\nguard = \"cancel\"\n\
             [detect.rules.long_query]\nguard = \"shoot\"\n",
            &[],
        )
        .unwrap_err()
        .to_string();
        for key in [
            "guard.mode",
            "guard.max_actions_per_minute",
            "guard.exclude_applications",
            "detect.rules.db_time_hog.guard",
            "detect.rules.long_query.guard",
        ] {
            assert!(err.contains(key), "{key}: {err}");
        }
        let config = load(
            "[guard]\nmode = \"enforce\"\ngrace = \"0s\"\n\
             [detect.rules.idle_in_transaction]\nguard = \"none\"\n",
            &[],
        )
        .unwrap();
        assert_eq!(config.detect.guard.grace, Duration::ZERO);
        let rules = &config.detect.rules;
        assert_eq!(
            rules[&crate::detect::RuleName::IdleInTransaction].guard,
            None
        );
        assert_eq!(
            rules[&crate::detect::RuleName::LongQuery].guard,
            Some(crate::store::guard::GuardAction::Cancel)
        );
    }

    #[test]
    fn wrong_types_name_the_key() {
        let err = load("[ingest]\nmax_tenants = \"many\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("max_tenants"), "{err}");
    }

    #[test]
    fn environment_overrides_file_keys() {
        let config = load(
            "[server]\nlisten = \"127.0.0.1:1\"\n",
            &[
                ("TENANTWATCH__SERVER__LISTEN", "0.0.0.0:9999"),
                ("TENANTWATCH__INGEST__MAX_TENANTS", "42"),
                ("TENANTWATCH__INGEST__UDP_LISTEN", ""),
                ("TENANTWATCH_AUTH_TOKEN", " s3cret\n"),
                ("UNRELATED", "1"),
            ],
        )
        .unwrap();
        assert_eq!(config.server.listen, "0.0.0.0:9999".parse().unwrap());
        assert_eq!(config.ingest.max_tenants, 42);
        assert_eq!(config.ingest.udp_listen, None);
        assert_eq!(config.server.auth_token, Some(Secret::new("s3cret")));
        let err = load("", &[("TENANTWATCH__SERVER__NOPE", "1")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("nope"), "{err}");
    }

    #[test]
    fn token_file_is_read_and_never_printed() {
        let dir = std::env::temp_dir().join(format!("tw-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let token = dir.join("token");
        std::fs::write(&token, "hunter2\n").unwrap();
        let config = load(&format!("[server]\nauth_token_file = {:?}\n", token), &[]).unwrap();
        assert_eq!(
            config.server.auth_token.as_ref().unwrap().expose(),
            "hunter2"
        );
        assert!(!format!("{config:?}").contains("hunter2"));
        assert!(!config.summary().contains("hunter2"));
        let err = load("[server]\nauth_token_file = \"/nonexistent/token\"\n", &[]).unwrap_err();
        assert!(err.to_string().contains("server.auth_token_file"));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn syntax_errors_never_quote_a_password() {
        for text in [
            "[[targets]]\nname = \"a\"\ndsn = \"host=h password=hunter2 user=u\" x\n",
            "[[targets]]\nname = \"a\"\ndsn = \"postgresql://u:hunter2@h/db\nmore",
            "[[targets]]\nname = 1\ndsn = 'password=hunter2'\n",
            "[ingest]\nmax_tenants = \"postgresql://u:hunter2@h/db\"\n",
        ] {
            let err = load(text, &[]).unwrap_err().to_string();
            assert!(!err.contains("hunter2"), "{err}");
            assert!(err.contains("line "), "{err}");
        }
    }

    #[test]
    fn reload_names_the_keys_it_cannot_apply() {
        let old = load("", &[]).unwrap();
        let new = load(
            "[server]\nlisten = \"127.0.0.1:1\"\n[ingest]\nmax_tenants = 5\n[ratelimit]\ndefault_qps = 5\n",
            &[],
        )
        .unwrap();
        assert_eq!(
            old.restart_only_changes(&new),
            ["server.listen", "ingest.max_tenants"]
        );
        assert!(old.restart_only_changes(&old.clone()).is_empty());
    }

    #[test]
    fn a_non_loopback_listener_needs_a_write_token() {
        let err = load("[server]\nlisten = \"0.0.0.0:9645\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("server.listen"), "{err}");
        let on_purpose = "[server]\nlisten = \"0.0.0.0:9645\"\nallow_unauthenticated = true\n";
        assert!(load(on_purpose, &[]).is_ok());
        let with_token = load(
            "[server]\nlisten = \"0.0.0.0:9645\"\n",
            &[
                ("TENANTWATCH_AUTH_TOKEN", "t"),
                ("TENANTWATCH_READ_TOKEN", "r"),
            ],
        )
        .unwrap();
        assert_eq!(with_token.server.read_token, Some(Secret::new("r")));
    }

    #[test]
    fn environment_variables_are_expanded_in_values() {
        let text = "[[targets]]\nname = \"${POD_NAME}\"\ndsn = \"host=${PGHOST} user=u\"\n\
                    [tenants]\nrules = [{ source = \"schema\", pattern = \"^t_(?P<tenant>.+)$\" }]\n";
        let env = vec![
            ("POD_NAME".to_owned(), "postgres-0".to_owned()),
            ("PGHOST".to_owned(), "db1".to_owned()),
        ];
        let config = Config::from_toml_with_env(text, Path::new("t.toml"), env).unwrap();
        assert_eq!(config.targets[0].name, "postgres-0");
        assert_eq!(config.targets[0].description, "db1:5432/u");
        // A `$` that starts no `${NAME}` stays as written.
        assert_eq!(
            config.attribution.rules()[0].pattern.as_str(),
            "^t_(?P<tenant>.+)$"
        );
        let err = Config::from_toml_with_env(text, Path::new("t.toml"), Vec::new())
            .unwrap_err()
            .to_string();
        assert!(err.contains("targets[0].name"), "{err}");
        assert!(err.contains("POD_NAME is not set"), "{err}");
        assert!(err.contains("PGHOST is not set"), "{err}");
    }

    #[test]
    fn expansion_leaves_other_dollars_alone() {
        let env = vec![("A".to_owned(), "1".to_owned())];
        assert_eq!(
            expand_text("x$y ${A} ${ $${A} ${A", &env).0,
            "x$y 1 ${ ${A} ${A"
        );
        assert_eq!(expand_text("${B}", &env).1, vec!["B".to_owned()]);
    }

    #[test]
    fn password_env_reads_the_environment_given() {
        let text = "[[targets]]\nname = \"a\"\ndsn = \"host=h user=u\"\npassword_env = \"TW_TEST_PGPASSWORD\"\n";
        assert!(load(text, &[("TW_TEST_PGPASSWORD", "p")]).is_ok());
        let err = load(text, &[]).unwrap_err().to_string();
        assert!(err.contains("password_env"), "{err}");
    }

    #[test]
    fn example_config_equals_the_defaults() {
        let example = include_str!("../../tenantwatch.example.toml");
        let parsed: FileConfig = toml::from_str(example).expect("example parses");
        assert_eq!(parsed, FileConfig::default());
    }

    #[test]
    fn every_example_key_is_documented() {
        let example = include_str!("../../tenantwatch.example.toml");
        let docs = include_str!("../../docs/configuration.md");
        let table: toml::Table = toml::from_str(example).unwrap();
        let mut keys = Vec::new();
        for (section, value) in &table {
            for key in value.as_table().unwrap().keys() {
                keys.push(format!("{section}.{key}"));
            }
        }
        keys.push("server.auth_token_file".into());
        for key in [
            "name",
            "dsn",
            "password_file",
            "password_env",
            "poll_interval",
            "stats_interval",
            "size_interval",
            "statement_timeout",
            "lock_timeout",
            "connect_timeout",
            "databases",
            "max_databases",
            "size_batch",
            "schema_detail",
            "tls_ca_file",
            "statements",
            "statements_text",
            "group",
            "max_sessions",
        ] {
            keys.push(format!("targets.{key}"));
        }
        for key in ["source", "pattern", "key"] {
            keys.push(format!("tenants.rules.{key}"));
        }
        for key in [
            "name",
            "dsn",
            "password_file",
            "password_env",
            "poll_interval",
            "connect_timeout",
        ] {
            keys.push(format!("pgbouncers.{key}"));
        }
        for key in keys {
            assert!(
                docs.contains(&format!("`{key}`")),
                "docs/configuration.md misses `{key}`"
            );
        }
    }
}
