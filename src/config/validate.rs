//! Validation: every key of the file checked at once, each bad one reported
//! with its dotted name and value, and each module's settings built from
//! its section.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use super::file::*;
use super::{AUTH_TOKEN_ENV, Config, ConfigError, InvalidKey, READ_TOKEN_ENV};
use crate::attribution::{Attribution, Exclusion, Rule, RuleSource};
use crate::capacity::CapacitySettings;
use crate::collect::pgbouncer::PgBouncerConfig;
use crate::collect::{DatabaseSelection, TargetConfig};
use crate::detect::settings::GuardAction;
use crate::detect::{DetectSettings, GuardMode, GuardSettings, RuleName};
use crate::http::{Secret, ServerSettings};
use crate::ingest::IngestSettings;
use crate::ratelimit::RatePolicy;
use crate::store::SchemaDetail;
use crate::telemetry::LogFormat;

/// Collects every bad key instead of stopping at the first.
#[derive(Default)]
struct Validator {
    errors: Vec<InvalidKey>,
}

impl Validator {
    fn fail(&mut self, key: &str, value: impl fmt::Display, message: impl Into<String>) {
        self.errors.push(InvalidKey {
            key: key.to_owned(),
            value: value.to_string(),
            message: message.into(),
        });
    }

    fn duration(&mut self, key: &str, value: &str) -> Duration {
        match humantime::parse_duration(value) {
            Ok(d) if !d.is_zero() => d,
            Ok(_) => {
                self.fail(key, format!("{value:?}"), "must be longer than zero");
                Duration::from_secs(1)
            }
            Err(err) => {
                self.fail(
                    key,
                    format!("{value:?}"),
                    format!("not a duration ({err}); write e.g. \"10s\", \"5m\""),
                );
                Duration::from_secs(1)
            }
        }
    }

    /// A duration that may be zero ("0s" turns the delay off).
    fn duration_or_zero(&mut self, key: &str, value: &str) -> Duration {
        match humantime::parse_duration(value) {
            Ok(d) => d,
            Err(_) => self.duration(key, value),
        }
    }

    fn addr(&mut self, key: &str, value: &str) -> SocketAddr {
        value.parse().unwrap_or_else(|err| {
            self.fail(
                key,
                format!("{value:?}"),
                format!("not an IP:port address ({err})"),
            );
            SocketAddr::from(([127, 0, 0, 1], 0))
        })
    }

    fn range(&mut self, key: &str, value: usize, min: usize, max: usize) -> usize {
        if value < min || value > max {
            self.fail(key, value, format!("must be between {min} and {max}"));
        }
        value
    }
}

/// Validates `file` and resolves what it names outside itself: the token
/// and password files and CA files it points to are read, and
/// `password_env` and [`AUTH_TOKEN_ENV`] are looked up in `env`, never in
/// the process environment.
pub(super) fn assemble(file: &FileConfig, env: &[(String, String)]) -> Result<Config, ConfigError> {
    let mut v = Validator::default();
    let server = validate_server(&mut v, &file.server, env);
    let ingest = validate_ingest(&mut v, &file.ingest);
    let log_format = LogFormat::parse(&file.log.format).unwrap_or_else(|| {
        v.fail(
            "log.format",
            format!("{:?}", file.log.format),
            "must be \"plain\" or \"json\"",
        );
        LogFormat::Plain
    });
    let mut targets = validate_targets(&mut v, &file.targets, env);
    for target in &mut targets {
        target.max_tenants = ingest.max_tenants;
    }
    let pgbouncers = validate_pgbouncers(&mut v, &file.pgbouncers, env, ingest.max_tenants);
    let attribution = validate_rules(&mut v, &file.tenants.rules)
        .with_exclusions(validate_exclusions(&mut v, &file.tenants.exclude));
    let mut detect = validate_detect(&mut v, &file.detect, ingest.share_window);
    detect.guard = validate_guard(&mut v, &file.guard);
    let mut ratelimit = validate_ratelimit(&mut v, &file.ratelimit);
    if let Some(path) = &file.tenants.tiers_file {
        ratelimit.tenant_tiers = read_tiers_file(&mut v, path);
    }
    let expected_tenants = file
        .tenants
        .expected_file
        .as_deref()
        .map(|path| read_expected_file(&mut v, path))
        .unwrap_or_default();
    let ratelimit_idle_ttl = v.duration("ratelimit.idle_ttl", &file.ratelimit.idle_ttl);
    let callers = validate_callers(&mut v, &file.ratelimit.callers);
    let ratelimit_redis = validate_ratelimit_backend(&mut v, &file.ratelimit, server.listen);
    let api = validate_api(&mut v, &file.api);
    if let Err(message) =
        crate::metrics::ExpositionSettings::validate_buckets(&file.metrics.latency_buckets)
    {
        v.fail(
            "metrics.latency_buckets",
            format!("{:?}", file.metrics.latency_buckets),
            message,
        );
    }
    let metrics = crate::metrics::ExpositionSettings {
        histogram_by_kind: file.metrics.histogram_by_kind,
        latency_buckets: file.metrics.latency_buckets.clone(),
    };
    let state = crate::state::StateSettings {
        file: (!file.state.file.trim().is_empty()).then(|| file.state.file.trim().into()),
        save_interval: v.duration("state.save_interval", &file.state.save_interval),
    };
    if !v.errors.is_empty() {
        return Err(ConfigError::Invalid(v.errors));
    }
    Ok(Config {
        server,
        ingest,
        log_format,
        targets,
        pgbouncers,
        expected_tenants: std::sync::Arc::new(expected_tenants),
        attribution,
        detect,
        ratelimit,
        ratelimit_idle_ttl,
        callers,
        ratelimit_redis,
        api,
        state,
        metrics,
    })
}

fn validate_callers(
    v: &mut Validator,
    callers: &std::collections::BTreeMap<String, FileCaller>,
) -> Vec<crate::ratelimit::Caller> {
    let mut valid = Vec::new();
    for (name, caller) in callers {
        let key = |field: &str| format!("ratelimit.callers.{name}.{field}");
        let token = token(v, &key("token_file"), Some(&caller.token_file), "", &[]);
        if caller.tenants.is_empty() {
            v.fail(&key("tenants"), "[]", "list at least one tenant pattern");
        }
        let mut patterns = Vec::new();
        for (i, pattern) in caller.tenants.iter().enumerate() {
            match regex::Regex::new(pattern) {
                Ok(re) => patterns.push(re),
                Err(err) => v.fail(
                    &format!("{}[{i}]", key("tenants")),
                    format!("{pattern:?}"),
                    format!("not a regular expression: {err}"),
                ),
            }
        }
        if let Some(token) = token {
            valid.push(crate::ratelimit::Caller {
                name: name.clone(),
                token: token.expose().to_owned(),
                tenants: patterns,
            });
        }
    }
    valid
}

/// A token from the environment variable `var`, else from the file the key
/// names.
fn token(
    v: &mut Validator,
    key: &str,
    file: Option<&std::path::PathBuf>,
    var: &str,
    env: &[(String, String)],
) -> Option<Secret> {
    let from_file = file.and_then(|path| match std::fs::read_to_string(path) {
        Ok(token) if !token.trim().is_empty() => Some(Secret::new(token.trim())),
        Ok(_) => {
            v.fail(key, path.display(), "the file is empty");
            None
        }
        Err(err) => {
            v.fail(key, path.display(), format!("cannot read it: {err}"));
            None
        }
    });
    let from_env = env
        .iter()
        .find(|(name, _)| name == var)
        .map(|(_, value)| value.trim())
        .filter(|token| !token.is_empty())
        .map(Secret::new);
    from_env.or(from_file)
}

fn validate_server(v: &mut Validator, s: &FileServer, env: &[(String, String)]) -> ServerSettings {
    let auth_token = token(
        v,
        "server.auth_token_file",
        s.auth_token_file.as_ref(),
        AUTH_TOKEN_ENV,
        env,
    );
    let read_token = token(
        v,
        "server.read_token_file",
        s.read_token_file.as_ref(),
        READ_TOKEN_ENV,
        env,
    );
    let listen = v.addr("server.listen", &s.listen);
    if !listen.ip().is_loopback() && auth_token.is_none() && !s.allow_unauthenticated {
        v.fail(
            "server.listen",
            format!("{:?}", s.listen),
            "a non-loopback listener needs a write token (server.auth_token_file or \
             TENANTWATCH_AUTH_TOKEN), or server.allow_unauthenticated = true to serve \
             without one on purpose",
        );
    }
    ServerSettings {
        listen,
        auth_token,
        read_token,
        allow_unauthenticated: s.allow_unauthenticated,
        max_connections: v.range("server.max_connections", s.max_connections, 1, 1_000_000),
        header_read_timeout: v.duration("server.header_read_timeout", &s.header_read_timeout),
        body_read_timeout: v.duration("server.body_read_timeout", &s.body_read_timeout),
        shutdown_grace: v.duration("server.shutdown_grace", &s.shutdown_grace),
        shutdown_delay: v.duration_or_zero("server.shutdown_delay", &s.shutdown_delay),
        write_timeout: v.duration("server.write_timeout", &s.write_timeout),
        request_timeout: v.duration("server.request_timeout", &s.request_timeout),
        max_heavy_requests: v.range("server.max_heavy_requests", s.max_heavy_requests, 0, 1024),
        metrics_max_age: v.duration_or_zero("server.metrics_max_age", &s.metrics_max_age),
        tls: listener_tls(v, s),
    }
}

/// The listener's TLS configuration: both files or neither.
fn listener_tls(v: &mut Validator, s: &FileServer) -> Option<std::sync::Arc<rustls::ServerConfig>> {
    match (&s.tls_cert_file, &s.tls_key_file) {
        (None, None) => None,
        (Some(cert), Some(key)) => match crate::http::tls::server_config(cert, key) {
            Ok(config) => Some(std::sync::Arc::new(config)),
            Err(err) => {
                v.fail("server.tls_cert_file", cert.display(), err.to_string());
                None
            }
        },
        (Some(cert), None) => {
            v.fail(
                "server.tls_key_file",
                "<unset>",
                format!("needed with server.tls_cert_file = {}", cert.display()),
            );
            None
        }
        (None, Some(key)) => {
            v.fail(
                "server.tls_cert_file",
                "<unset>",
                format!("needed with server.tls_key_file = {}", key.display()),
            );
            None
        }
    }
}

fn validate_ingest(v: &mut Validator, i: &FileIngest) -> IngestSettings {
    let udp_listen = if i.udp_listen.trim().is_empty() {
        None
    } else {
        Some(v.addr("ingest.udp_listen", &i.udp_listen))
    };
    let ingest = IngestSettings {
        udp_listen,
        udp_receivers: v.range("ingest.udp_receivers", i.udp_receivers, 1, 64),
        udp_recv_buffer_bytes: v.range(
            "ingest.udp_recv_buffer_bytes",
            i.udp_recv_buffer_bytes,
            4096,
            1 << 30,
        ),
        max_datagram_bytes: v.range(
            "ingest.max_datagram_bytes",
            i.max_datagram_bytes,
            512,
            65_507,
        ),
        max_body_bytes: v.range("ingest.max_body_bytes", i.max_body_bytes, 1024, 1 << 30),
        max_line_bytes: v.range("ingest.max_line_bytes", i.max_line_bytes, 256, 1 << 20),
        min_sample_rate: i.min_sample_rate,
        max_tenants: v.range("ingest.max_tenants", i.max_tenants, 1, 10_000_000),
        tenant_idle_ttl: v.duration("ingest.tenant_idle_ttl", &i.tenant_idle_ttl),
        share_window: v.duration("ingest.share_window", &i.share_window),
        max_endpoints_per_tenant: v.range(
            "ingest.max_endpoints_per_tenant",
            i.max_endpoints_per_tenant,
            1,
            1000,
        ),
        max_instances: v.range("ingest.max_instances", i.max_instances, 1, 100_000),
    };
    if !(i.min_sample_rate.is_finite() && i.min_sample_rate > 0.0 && i.min_sample_rate <= 1.0) {
        v.fail(
            "ingest.min_sample_rate",
            i.min_sample_rate,
            "must be a number in (0, 1]",
        );
    }
    if ingest.share_window < Duration::from_secs(12) {
        v.fail(
            "ingest.share_window",
            format!("{:?}", i.share_window),
            "must be at least 12s (the window is kept in 12 slots)",
        );
    }
    ingest
}

fn validate_targets(
    v: &mut Validator,
    files: &[FileTarget],
    env: &[(String, String)],
) -> Vec<TargetConfig> {
    let targets = files
        .iter()
        .enumerate()
        .filter_map(|(i, target)| validate_target(v, i, target, env))
        .collect::<Vec<_>>();
    for (i, target) in targets.iter().enumerate() {
        if targets[..i].iter().any(|t| t.name == target.name) {
            v.fail(
                &format!("targets[{i}].name"),
                format!("{:?}", target.name),
                "target names must be unique",
            );
        }
    }
    targets
}

/// A libpq connection string with its password from `password_file` or
/// `password_env`. The DSN may hold a password: its value is never echoed.
fn connection_settings(
    v: &mut Validator,
    key: &dyn Fn(&str) -> String,
    dsn: &str,
    (password_file, password_env): (Option<&std::path::Path>, Option<&str>),
    env: &[(String, String)],
) -> Option<tokio_postgres::Config> {
    let mut pg: tokio_postgres::Config = match dsn.parse() {
        Ok(pg) => pg,
        Err(err) => {
            let reason = err.to_string();
            let reason = if reason.contains(dsn) {
                "cannot be parsed".into()
            } else {
                reason
            };
            v.fail(
                &key("dsn"),
                "<hidden>",
                format!("not a libpq connection string: {reason}"),
            );
            return None;
        }
    };
    if let Some(path) = password_file {
        match std::fs::read_to_string(path) {
            Ok(password) => {
                pg.password(password.trim_end_matches(['\n', '\r']));
            }
            Err(err) => v.fail(
                &key("password_file"),
                path.display(),
                format!("cannot read it: {err}"),
            ),
        }
    }
    if let Some(var) = password_env {
        match env.iter().find(|(key, _)| key == var) {
            Some((_, password)) => {
                pg.password(password);
            }
            None => v.fail(
                &key("password_env"),
                var,
                "the environment variable is not set",
            ),
        }
    }
    Some(pg)
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

fn validate_pgbouncers(
    v: &mut Validator,
    files: &[FilePgBouncer],
    env: &[(String, String)],
    max_tenants: usize,
) -> Vec<PgBouncerConfig> {
    let mut pgbouncers: Vec<PgBouncerConfig> = Vec::new();
    for (i, file) in files.iter().enumerate() {
        let key = |field: &str| format!("pgbouncers[{i}].{field}");
        if !valid_name(&file.name) {
            v.fail(
                &key("name"),
                format!("{:?}", file.name),
                "must be 1 or more ASCII letters, digits and _-.",
            );
        } else if pgbouncers.iter().any(|p| p.name == file.name) {
            v.fail(
                &key("name"),
                format!("{:?}", file.name),
                "PgBouncer names must be unique",
            );
        }
        let Some(mut pg) = connection_settings(
            v,
            &key,
            &file.dsn,
            (file.password_file.as_deref(), file.password_env.as_deref()),
            env,
        ) else {
            continue;
        };
        let connect_timeout = v.duration(&key("connect_timeout"), &file.connect_timeout);
        pg.connect_timeout(connect_timeout);
        pg.application_name("tenantwatch");
        if pg.get_dbname().is_none() {
            // The admin console is the virtual database `pgbouncer`.
            pg.dbname("pgbouncer");
        }
        pgbouncers.push(PgBouncerConfig {
            name: file.name.clone(),
            description: crate::collect::pgbouncer::describe(&pg),
            poll_interval: v.duration(&key("poll_interval"), &file.poll_interval),
            connect_timeout,
            max_tenants,
            pg,
        });
    }
    pgbouncers
}

fn validate_api(v: &mut Validator, a: &FileApi) -> CapacitySettings {
    let api = CapacitySettings {
        history: v.duration("api.history", &a.history),
        history_resolution: v.duration("api.history_resolution", &a.history_resolution),
        size_budget_bytes: a.size_budget_bytes,
        history_tenants: v.range("api.history_tenants", a.history_tenants, 0, 100_000),
        balance_tolerance: a.balance_tolerance,
    };
    if !(api.balance_tolerance.is_finite() && api.balance_tolerance >= 0.0) {
        v.fail(
            "api.balance_tolerance",
            api.balance_tolerance,
            "must be a number >= 0",
        );
    }
    if api.history_resolution > api.history {
        v.fail(
            "api.history_resolution",
            &a.history_resolution,
            "must not be longer than api.history",
        );
    }
    api
}

/// A target's TLS: the CA file must load, and a CA to verify against means
/// TLS or nothing: with libpq's default `prefer`, a server (or a man in the
/// middle) answering "no TLS" would get a plaintext session.
fn validate_target_tls(
    v: &mut Validator,
    key: &str,
    file: &FileTarget,
    pg: &mut tokio_postgres::Config,
) {
    if let Err(err) = crate::collect::tls::connector(file.tls_ca_file.as_deref()) {
        let path = file
            .tls_ca_file
            .as_deref()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        v.fail(key, path, err.to_string());
    }
    if file.tls_ca_file.is_some() {
        if pg.get_ssl_mode() == tokio_postgres::config::SslMode::Disable {
            v.fail(
                key,
                "<set>",
                "the DSN says sslmode=disable; remove one of the two",
            );
        }
        pg.ssl_mode(tokio_postgres::config::SslMode::Require);
    }
}

fn validate_target(
    v: &mut Validator,
    i: usize,
    file: &FileTarget,
    env: &[(String, String)],
) -> Option<TargetConfig> {
    let key = |field: &str| format!("targets[{i}].{field}");
    let errors_before = v.errors.len();
    if !valid_name(&file.name) {
        v.fail(
            &key("name"),
            format!("{:?}", file.name),
            "must be 1 or more ASCII letters, digits and _-.",
        );
    }
    let mut pg = connection_settings(
        v,
        &key,
        &file.dsn,
        (file.password_file.as_deref(), file.password_env.as_deref()),
        env,
    )?;
    validate_target_tls(v, &key("tls_ca_file"), file, &mut pg);
    let connect_timeout = v.duration(&key("connect_timeout"), &file.connect_timeout);
    pg.connect_timeout(connect_timeout);
    pg.application_name("tenantwatch");
    let databases = match file.databases.as_slice() {
        [] => DatabaseSelection::Dsn,
        [all] if all == "*" => {
            DatabaseSelection::All(v.range(&key("max_databases"), file.max_databases, 1, 10_000))
        }
        list => {
            if list.iter().any(|d| d == "*" || d.is_empty()) {
                v.fail(
                    &key("databases"),
                    format!("{list:?}"),
                    "use [\"*\"] alone, or a list of database names",
                );
            }
            DatabaseSelection::List(list.to_vec())
        }
    };
    let target = TargetConfig {
        name: file.name.clone(),
        description: crate::collect::settings::describe_pg(&pg),
        poll_interval: v.duration(&key("poll_interval"), &file.poll_interval),
        stats_interval: v.duration(&key("stats_interval"), &file.stats_interval),
        size_interval: v.duration(&key("size_interval"), &file.size_interval),
        statement_timeout: v.duration(&key("statement_timeout"), &file.statement_timeout),
        lock_timeout: v.duration(&key("lock_timeout"), &file.lock_timeout),
        connect_timeout,
        databases,
        size_batch: v.range(&key("size_batch"), file.size_batch, 1, 100_000),
        tls_ca_file: file.tls_ca_file.clone(),
        max_tenants: crate::ingest::IngestSettings::default().max_tenants,
        schema_detail: SchemaDetail::parse(&file.schema_detail).unwrap_or_else(|| {
            v.fail(
                &key("schema_detail"),
                format!("{:?}", file.schema_detail),
                "must be \"basic\" or \"full\"",
            );
            SchemaDetail::Basic
        }),
        statements: match file.statements.as_str() {
            "auto" => true,
            "off" => false,
            other => {
                v.fail(
                    &key("statements"),
                    format!("{other:?}"),
                    "must be \"auto\" or \"off\"",
                );
                false
            }
        },
        statements_text: file.statements_text,
        group: file.group.clone().filter(|g| !g.is_empty()),
        max_sessions: v.range(&key("max_sessions"), file.max_sessions, 2, 64),
        pg,
    };
    (v.errors.len() == errors_before).then_some(target)
}

fn validate_detect(v: &mut Validator, file: &FileDetect, window: Duration) -> DetectSettings {
    use crate::detect::Severity;
    let mut settings = DetectSettings {
        interval: v.duration("detect.interval", &file.interval),
        window,
        baseline_half_life: v.duration("detect.baseline_half_life", &file.baseline_half_life),
        floor_qps: file.floor_qps,
        relax_factor: file.relax_factor,
        ..DetectSettings::default()
    };
    if !(file.floor_qps.is_finite() && file.floor_qps > 0.0) {
        v.fail(
            "detect.floor_qps",
            file.floor_qps,
            "must be a number above 0",
        );
    }
    if !(file.relax_factor.is_finite() && file.relax_factor > 1.0) {
        v.fail(
            "detect.relax_factor",
            file.relax_factor,
            "must be a number above 1",
        );
    }
    for (name, over) in &file.rules {
        let Some(rule) = RuleName::parse(name) else {
            let names: Vec<&str> = RuleName::ALL.iter().map(|r| r.as_str()).collect();
            v.fail(
                &format!("detect.rules.{name}"),
                format!("{name:?}"),
                format!("unknown rule; rules are {}", names.join(", ")),
            );
            continue;
        };
        let key = |field: &str| format!("detect.rules.{name}.{field}");
        let Some(r) = settings.rules.get_mut(&rule) else {
            continue;
        };
        if let Some(enabled) = over.enabled {
            r.enabled = enabled;
        }
        for (field, value, target) in [
            ("threshold", over.threshold, &mut r.threshold),
            ("min", over.min, &mut r.min),
            ("factor", over.factor, &mut r.factor),
        ] {
            if let Some(value) = value {
                if value.is_finite() && value >= 0.0 {
                    *target = value;
                } else {
                    v.fail(&key(field), value, "must be a finite number >= 0");
                }
            }
        }
        if let Some(for_) = &over.for_ {
            r.for_ = humantime::parse_duration(for_).unwrap_or_else(|err| {
                v.fail(
                    &key("for"),
                    format!("{for_:?}"),
                    format!("not a duration ({err})"),
                );
                r.for_
            });
        }
        if let Some(cooldown) = &over.cooldown {
            r.cooldown = humantime::parse_duration(cooldown).unwrap_or_else(|err| {
                v.fail(
                    &key("cooldown"),
                    format!("{cooldown:?}"),
                    format!("not a duration ({err})"),
                );
                r.cooldown
            });
        }
        if let Some(severity) = &over.severity {
            match Severity::parse(severity) {
                Some(severity) => r.severity = severity,
                None => v.fail(
                    &key("severity"),
                    format!("{severity:?}"),
                    "must be info, warning or critical",
                ),
            }
        }
        if let Some(tighten) = over.tighten {
            r.tighten = tighten;
        }
        if let Some(guard) = &over.guard {
            let guarded = matches!(
                rule,
                RuleName::LongQuery | RuleName::IdleInTransaction | RuleName::LockBlocker
            );
            match (guard.as_str(), GuardAction::parse(guard)) {
                ("none", _) => r.guard = None,
                (_, Some(action)) if guarded => r.guard = Some(action),
                (_, Some(_)) => v.fail(
                    &key("guard"),
                    format!("{guard:?}"),
                    "only long_query, idle_in_transaction and lock_blocker end sessions",
                ),
                (_, None) => v.fail(
                    &key("guard"),
                    format!("{guard:?}"),
                    "must be \"cancel\", \"terminate\" or \"none\"",
                ),
            }
        }
    }
    settings
}

/// `[guard]`.
fn validate_guard(v: &mut Validator, file: &FileGuard) -> GuardSettings {
    let mode = match file.mode.as_str() {
        "off" => GuardMode::Off,
        "dry_run" => GuardMode::DryRun,
        "enforce" => GuardMode::Enforce,
        other => {
            v.fail(
                "guard.mode",
                format!("{other:?}"),
                "must be \"off\", \"dry_run\" or \"enforce\"",
            );
            GuardMode::Off
        }
    };
    let grace = v.duration_or_zero("guard.grace", &file.grace);
    if file.max_actions_per_minute == 0 {
        v.fail(
            "guard.max_actions_per_minute",
            0,
            "must be at least 1 (turn the guard off with guard.mode = \"off\")",
        );
    }
    let exclude_applications =
        regex::RegexSet::new(&file.exclude_applications).unwrap_or_else(|err| {
            v.fail(
                "guard.exclude_applications",
                format!("{:?}", file.exclude_applications),
                format!("not a list of regular expressions ({err})"),
            );
            regex::RegexSet::empty()
        });
    GuardSettings {
        mode,
        grace,
        max_actions_per_minute: file.max_actions_per_minute,
        exclude_applications,
    }
}

/// `ratelimit.backend` and `[ratelimit.redis]`: `None` for the local backend.
fn validate_ratelimit_backend(
    v: &mut Validator,
    file: &FileRateLimit,
    listen: SocketAddr,
) -> Option<crate::ratelimit::RedisSettings> {
    use crate::ratelimit::{FailMode, RedisSettings};
    match file.backend.as_str() {
        "local" => return None,
        "redis" => {}
        other => {
            v.fail(
                "ratelimit.backend",
                format!("{other:?}"),
                "must be \"local\" or \"redis\"",
            );
            return None;
        }
    }
    let redis = &file.redis;
    if redis.url.trim().is_empty() {
        v.fail(
            "ratelimit.redis.url",
            "\"\"",
            "must be set with ratelimit.backend = \"redis\", e.g. \"redis://127.0.0.1:6379\"",
        );
    } else if let Err(err) = ::redis::Client::open(redis.url.as_str()) {
        // The URL may hold a password: name the problem, not the value.
        v.fail(
            "ratelimit.redis.url",
            "<redacted>",
            format!("not a Redis URL ({:?})", err.kind()),
        );
    }
    let fail_mode = match redis.fail_mode.as_str() {
        "local" => FailMode::Local,
        "open" => FailMode::Open,
        "closed" => FailMode::Closed,
        other => {
            v.fail(
                "ratelimit.redis.fail_mode",
                format!("{other:?}"),
                "must be \"local\", \"open\" or \"closed\"",
            );
            FailMode::Local
        }
    };
    let timeout = v.duration("ratelimit.redis.timeout", &redis.timeout);
    let pool_size = v.range("ratelimit.redis.pool_size", redis.pool_size, 1, 64);
    let expected_instances = v.range(
        "ratelimit.redis.expected_instances",
        redis.expected_instances as usize,
        1,
        10_000,
    ) as u32;
    if redis.key_prefix.len() > 128 {
        v.fail(
            "ratelimit.redis.key_prefix",
            format!("{:?}", redis.key_prefix),
            "must be at most 128 bytes",
        );
    }
    let instance = match redis.instance.trim() {
        "" => format!("{}:{}", crate::ratelimit::host_name(), listen.port()),
        name => name.to_string(),
    };
    if instance.len() > 200 || instance.chars().any(char::is_control) {
        v.fail(
            "ratelimit.redis.instance",
            format!("{instance:?}"),
            "must be at most 200 printable characters",
        );
    }
    Some(RedisSettings {
        url: redis.url.trim().to_string(),
        key_prefix: redis.key_prefix.clone(),
        timeout,
        pool_size,
        fail_mode,
        expected_instances,
        instance,
    })
}

fn validate_ratelimit(v: &mut Validator, file: &FileRateLimit) -> RatePolicy {
    use crate::ratelimit::{MAX_QPS, Rate, TenantOverride, Tier};
    let mut rate = |key: &str, qps: f64, burst: u32| {
        if !(qps.is_finite() && qps > 0.0 && qps <= MAX_QPS) {
            v.fail(
                &format!("{key}qps"),
                qps,
                "must be a number above 0 and at most 1e9",
            );
        }
        if burst == 0 {
            v.fail(&format!("{key}burst"), burst, "must be at least 1");
        }
        Rate { qps, burst }
    };
    let default = rate("ratelimit.default_", file.default_qps, file.default_burst);
    let tiers = file
        .tiers
        .iter()
        .map(|(name, tier)| {
            let key = format!("ratelimit.tiers.{name}.");
            (
                name.clone(),
                Tier {
                    rate: rate(&key, tier.qps, tier.burst),
                    shadow: tier.shadow,
                },
            )
        })
        .collect::<std::collections::HashMap<_, _>>();
    let mut tenants = std::collections::HashMap::new();
    for (tenant, quota) in &file.tenants {
        let key = format!("ratelimit.tenants.{tenant}");
        if let Some(tier) = &quota.tier
            && !tiers.contains_key(tier)
        {
            v.fail(
                &format!("{key}.tier"),
                format!("{tier:?}"),
                "no such tier in [ratelimit.tiers]",
            );
        }
        if quota
            .qps
            .is_some_and(|q| !(q.is_finite() && q > 0.0 && q <= MAX_QPS))
        {
            v.fail(
                &format!("{key}.qps"),
                quota.qps.unwrap_or_default(),
                "must be a number above 0 and at most 1e9",
            );
        }
        if quota.burst == Some(0) {
            v.fail(&format!("{key}.burst"), 0, "must be at least 1");
        }
        tenants.insert(
            tenant.clone(),
            TenantOverride {
                tier: quota.tier.clone(),
                qps: quota.qps,
                burst: quota.burst,
            },
        );
    }
    RatePolicy {
        default,
        shadow: file.shadow,
        tiers,
        tenants,
        tenant_tiers: Default::default(),
    }
}

/// Largest tiers file read.
const MAX_TIERS_FILE_BYTES: u64 = 64 * 1024 * 1024;

/// `tenants.tiers_file`: one `tenant,tier` per line (`#` comments, blank
/// lines allowed). Bad lines are reported by number (the first five).
/// Reads a file of one entry per line (`#` comments and blank lines
/// skipped, at most 64 MiB) for `key`, handing each line to `parse`; bad
/// lines are refused by number (the first five, then a count).
fn read_lines_file(
    v: &mut Validator,
    key: &str,
    path: &std::path::Path,
    mut parse: impl FnMut(&str) -> Result<(), String>,
) {
    let shown = path.display().to_string();
    let text = match std::fs::metadata(path) {
        Ok(meta) if meta.len() > MAX_TIERS_FILE_BYTES => {
            v.fail(key, &shown, "larger than 64 MiB");
            return;
        }
        Ok(_) => std::fs::read_to_string(path),
        Err(err) => Err(err),
    };
    let text = match text {
        Ok(text) => text,
        Err(err) => {
            v.fail(key, &shown, format!("cannot be read ({err})"));
            return;
        }
    };
    let mut bad = 0;
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Err(problem) = parse(line) {
            bad += 1;
            if bad <= 5 {
                v.fail(key, format!("{shown}:{}", number + 1), problem);
            }
        }
    }
    if bad > 5 {
        v.fail(key, &shown, format!("{} more bad lines", bad - 5));
    }
}

fn read_tiers_file(v: &mut Validator, path: &std::path::Path) -> HashMap<String, String> {
    let mut tiers = HashMap::new();
    read_lines_file(v, "tenants.tiers_file", path, |line| {
        let Some((tenant, tier)) = line.split_once(',') else {
            return Err("expected tenant,tier".to_string());
        };
        let (tenant, tier) = (tenant.trim(), tier.trim());
        if let Err(reject) = crate::event::validate_tenant(tenant) {
            return Err(format!("tenant: {}", reject.detail));
        }
        if tier.is_empty()
            || tier.len() > 64
            || !tier
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
        {
            return Err("tier: 1 to 64 of A-Z a-z 0-9 _ . -".to_string());
        }
        tiers.insert(tenant.to_string(), tier.to_string());
        Ok(())
    });
    tiers
}

/// `tenants.expected_file`: one tenant id per line.
fn read_expected_file(
    v: &mut Validator,
    path: &std::path::Path,
) -> std::collections::BTreeSet<String> {
    let mut expected = std::collections::BTreeSet::new();
    read_lines_file(v, "tenants.expected_file", path, |line| {
        crate::event::validate_tenant(line)
            .map_err(|reject| format!("tenant: {}", reject.detail))?;
        expected.insert(line.to_string());
        Ok(())
    });
    expected
}

fn validate_exclusions(v: &mut Validator, files: &[FileExclude]) -> Vec<Exclusion> {
    let mut valid = Vec::new();
    for (i, file) in files.iter().enumerate() {
        let key = |field: &str| format!("tenants.exclude[{i}].{field}");
        let source = match RuleSource::parse(&file.source) {
            Some(
                source @ (RuleSource::ApplicationName | RuleSource::Role | RuleSource::Database),
            ) => Some(source),
            _ => {
                v.fail(
                    &key("source"),
                    format!("{:?}", file.source),
                    "must be application_name, role or database",
                );
                None
            }
        };
        let pattern = regex::Regex::new(&file.pattern)
            .map_err(|err| {
                v.fail(
                    &key("pattern"),
                    format!("{:?}", file.pattern),
                    format!("not a regular expression: {err}"),
                );
            })
            .ok();
        if let (Some(source), Some(pattern)) = (source, pattern) {
            valid.push(Exclusion { source, pattern });
        }
    }
    valid
}

fn validate_rules(v: &mut Validator, rules: &[FileRule]) -> Attribution {
    let mut valid = Vec::new();
    for (i, rule) in rules.iter().enumerate() {
        let key = |field: &str| format!("tenants.rules[{i}].{field}");
        let source = RuleSource::parse(&rule.source);
        if source.is_none() {
            v.fail(
                &key("source"),
                format!("{:?}", rule.source),
                "must be schema, database, role, application_name or query_comment",
            );
        }
        let pattern = match regex::Regex::new(&rule.pattern) {
            Ok(pattern) if pattern.capture_names().any(|n| n == Some("tenant")) => Some(pattern),
            Ok(_) => {
                v.fail(
                    &key("pattern"),
                    format!("{:?}", rule.pattern),
                    "needs a named group (?P<tenant>...)",
                );
                None
            }
            Err(err) => {
                v.fail(
                    &key("pattern"),
                    format!("{:?}", rule.pattern),
                    format!("not a regular expression: {err}"),
                );
                None
            }
        };
        if rule.key.is_some() && source != Some(RuleSource::QueryComment) {
            v.fail(
                &key("key"),
                format!("{:?}", rule.key),
                "only query_comment rules take a key",
            );
        }
        if let (Some(source), Some(pattern)) = (source, pattern) {
            valid.push(Rule {
                source,
                pattern,
                comment_key: rule.key.clone().unwrap_or_else(|| "tenant".into()),
            });
        }
    }
    Attribution::new(valid)
}
