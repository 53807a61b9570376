//! Assembles a [`Config`] from [`Settings`]: every section checks its own
//! keys, then this module resolves what the file names outside itself
//! (token, password, CA, tiers and expected-tenant files; `password_env` in
//! the environment given) and checks the rules that span keys or sections.
//! Every bad key is reported at once, with its dotted name and value.

use std::collections::HashMap;
use std::sync::Arc;

use super::{AUTH_TOKEN_ENV, Config, ConfigError, READ_TOKEN_ENV, Settings};
use crate::collect::pgbouncer::PgBouncerConfig;
use crate::collect::{TargetConfig, TargetSettings};
use crate::http::{Secret, Tokens};
use crate::ratelimit::{Backend, RedisSettings};
use crate::settings::Problems;

type Validator = Problems;

/// Checks `settings` and resolves what they name outside the file: the
/// token, password and CA files are read, and `password_env` and
/// [`AUTH_TOKEN_ENV`] are looked up in `env`, never in the process
/// environment.
pub(super) fn assemble(
    settings: Settings,
    env: &[(String, String)],
) -> Result<Config, ConfigError> {
    let mut v = Problems::default();
    let s = &settings;
    s.server.check(&mut v);
    s.ingest.check(&mut v);
    s.detect.check(&mut v);
    s.guard.check(&mut v);
    s.ratelimit.check(&mut v);
    s.api.check(&mut v);
    s.state.check(&mut v);
    s.metrics.check(&mut v);
    if !s.metrics.idle_after.is_zero() && s.metrics.idle_after < s.ingest.share_window {
        v.fail(
            "metrics.idle_after",
            humantime::format_duration(s.metrics.idle_after).to_string(),
            format!(
                "must be 0s or at least ingest.share_window ({}): a hidden tenant would still hold database time the others' shares are measured against",
                humantime::format_duration(s.ingest.share_window)
            ),
        );
    }
    let tokens = listener_tokens(&mut v, s, env);
    let tls = s.server.load_tls(&mut v);
    let targets = targets(&mut v, s, env);
    let pgbouncers = pgbouncers(&mut v, s, env);
    let attribution = s.tenants.compile(&mut v);
    let tenant_tiers = s
        .tenants
        .tiers_file
        .as_deref()
        .map(|path| read_tiers_file(&mut v, path))
        .unwrap_or_default();
    let expected_tenants = s
        .tenants
        .expected_file
        .as_deref()
        .map(|path| read_expected_file(&mut v, path))
        .unwrap_or_default();
    let ratelimit_redis = (s.ratelimit.backend == Backend::Redis).then(|| redis(s));
    let detect = crate::detect::DetectSettings {
        window: s.ingest.share_window,
        guard: s.guard.clone(),
        ..s.detect.clone()
    };
    let ratelimit = s.ratelimit.policy(tenant_tiers);
    if !v.errors.is_empty() {
        return Err(ConfigError::Invalid(v.errors));
    }
    Ok(Config {
        tokens,
        tls,
        targets,
        pgbouncers,
        attribution,
        detect,
        ratelimit,
        ratelimit_redis,
        expected_tenants: Arc::new(expected_tenants),
        settings,
    })
}

/// The write and read tokens and the callers', from their files or the
/// environment. A non-loopback listener needs both a write token (for
/// `/v1/*`) and a read token (for `/metrics` and `/api/v1/*`, which show
/// query text and every tenant's figures) unless
/// `server.allow_unauthenticated` says to serve without them on purpose.
fn listener_tokens(v: &mut Validator, s: &Settings, env: &[(String, String)]) -> Tokens {
    let server = &s.server;
    let write = token(
        v,
        "server.auth_token_file",
        server.auth_token_file.as_ref(),
        AUTH_TOKEN_ENV,
        env,
    );
    let read = token(
        v,
        "server.read_token_file",
        server.read_token_file.as_ref(),
        READ_TOKEN_ENV,
        env,
    );
    if !server.listen.ip().is_loopback() && !server.allow_unauthenticated {
        let missing: Vec<&str> = [
            (
                write.is_none(),
                "a write token (server.auth_token_file or TENANTWATCH_AUTH_TOKEN)",
            ),
            (
                read.is_none(),
                "a read token (server.read_token_file or TENANTWATCH_READ_TOKEN)",
            ),
        ]
        .into_iter()
        .filter_map(|(absent, what)| absent.then_some(what))
        .collect();
        if !missing.is_empty() {
            v.fail(
                "server.listen",
                format!("{:?}", server.listen.to_string()),
                format!(
                    "a non-loopback listener needs {}, or server.allow_unauthenticated = true \
                     to serve without one on purpose",
                    missing.join(" and ")
                ),
            );
        }
    }
    let callers = callers(v, s);
    // The gRPC rate-limit service spends quotas: off loopback it needs a
    // token that may (the write token or a caller's), as POST /v1/* does.
    if let Some(grpc) = s.ratelimit.grpc_listen
        && !grpc.ip().is_loopback()
        && !server.allow_unauthenticated
        && write.is_none()
        && callers.is_empty()
    {
        v.fail(
            "ratelimit.grpc_listen",
            format!("{:?}", grpc.to_string()),
            "a non-loopback gRPC listener needs a write token (server.auth_token_file or \
             TENANTWATCH_AUTH_TOKEN) or [ratelimit.callers], or server.allow_unauthenticated = \
             true to serve without one on purpose",
        );
    }
    Tokens {
        write,
        read,
        callers,
    }
}

fn callers(v: &mut Validator, s: &Settings) -> Vec<crate::ratelimit::Caller> {
    let mut valid = Vec::new();
    for (name, caller) in &s.ratelimit.callers {
        let key = |field: &str| format!("ratelimit.callers.{name}.{field}");
        let token = token(v, &key("token_file"), Some(&caller.token_file), "", &[]);
        let mut patterns = Vec::new();
        for (i, pattern) in caller.tenants.iter().enumerate() {
            match anchored(pattern) {
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

/// A caller's tenant pattern, matched against the whole tenant id: `clinic1`
/// lets a caller check `clinic1`, never `xclinic12`. The pattern is checked
/// on its own first, so that one like `a)|(b` is refused rather than
/// changing the meaning of the anchors around it.
fn anchored(pattern: &str) -> Result<regex::Regex, regex::Error> {
    regex::Regex::new(pattern)?;
    regex::Regex::new(&format!(r"\A(?:{pattern})\z"))
}

/// `[ratelimit.redis]` with the instance name filled in: host name and
/// HTTP port unless the file names one.
fn redis(s: &Settings) -> RedisSettings {
    let redis = &s.ratelimit.redis;
    let instance = match redis.instance.trim() {
        "" => format!(
            "{}:{}",
            crate::ratelimit::host_name(),
            s.server.listen.port()
        ),
        name => name.to_owned(),
    };
    RedisSettings {
        url: redis.url.trim().to_owned(),
        instance,
        ..redis.clone()
    }
}

fn targets(v: &mut Validator, s: &Settings, env: &[(String, String)]) -> Vec<TargetConfig> {
    let mut targets: Vec<TargetConfig> = Vec::new();
    for (i, target) in s.targets.iter().enumerate() {
        let key = |field: &str| format!("targets[{i}].{field}");
        if targets.iter().any(|t| t.settings.name == target.name) {
            v.fail(
                &key("name"),
                format!("{:?}", target.name),
                "target names must be unique",
            );
        }
        if let Some(config) = target_config(v, &key, target, env, s.ingest.max_tenants) {
            targets.push(config);
        }
    }
    targets
}

fn target_config(
    v: &mut Validator,
    key: &dyn Fn(&str) -> String,
    target: &TargetSettings,
    env: &[(String, String)],
    max_tenants: usize,
) -> Option<TargetConfig> {
    let errors_before = v.errors.len();
    target.check(key, v);
    let mut pg = connection_settings(
        v,
        key,
        target.dsn.expose(),
        Password {
            file: target.password_file.as_deref(),
            env_var: target.password_env.as_deref(),
        },
        env,
    )?;
    validate_target_tls(v, &key("tls_ca_file"), target, &mut pg);
    pg.connect_timeout(target.connect_timeout);
    pg.application_name("tenantwatch");
    let config = TargetConfig {
        description: crate::collect::settings::describe_pg(&pg),
        databases: target.database_selection(),
        max_tenants,
        settings: TargetSettings {
            group: target.group.clone().filter(|g| !g.is_empty()),
            ..target.clone()
        },
        pg,
    };
    (v.errors.len() == errors_before).then_some(config)
}

fn pgbouncers(v: &mut Validator, s: &Settings, env: &[(String, String)]) -> Vec<PgBouncerConfig> {
    let mut pgbouncers: Vec<PgBouncerConfig> = Vec::new();
    for (i, file) in s.pgbouncers.iter().enumerate() {
        let key = |field: &str| format!("pgbouncers[{i}].{field}");
        file.check(&key, v);
        if pgbouncers.iter().any(|p| p.settings.name == file.name) {
            v.fail(
                &key("name"),
                format!("{:?}", file.name),
                "PgBouncer names must be unique",
            );
        }
        let Some(mut pg) = connection_settings(
            v,
            &key,
            file.dsn.expose(),
            Password {
                file: file.password_file.as_deref(),
                env_var: file.password_env.as_deref(),
            },
            env,
        ) else {
            continue;
        };
        pg.connect_timeout(file.connect_timeout);
        pg.application_name("tenantwatch");
        if pg.get_dbname().is_none() {
            // The admin console is the virtual database `pgbouncer`.
            pg.dbname("pgbouncer");
        }
        pgbouncers.push(PgBouncerConfig {
            settings: file.clone(),
            description: crate::collect::pgbouncer::describe(&pg),
            max_tenants: s.ingest.max_tenants,
            pg,
        });
    }
    pgbouncers
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

/// Where a connection's password comes from, if not from its DSN.
struct Password<'a> {
    /// `password_file`.
    file: Option<&'a std::path::Path>,
    /// `password_env`: a variable of the environment given.
    env_var: Option<&'a str>,
}

/// A libpq connection string with its password from `password_file` or
/// `password_env`. The DSN may hold a password: its value is never echoed.
fn connection_settings(
    v: &mut Validator,
    key: &dyn Fn(&str) -> String,
    dsn: &str,
    password: Password<'_>,
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
    if let Some(path) = password.file {
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
    if let Some(var) = password.env_var {
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

/// A target's TLS: the CA file must load, and a CA to verify against means
/// TLS or nothing: with libpq's default `prefer`, a server (or a man in the
/// middle) answering "no TLS" would get a plaintext session.
fn validate_target_tls(
    v: &mut Validator,
    key: &str,
    file: &TargetSettings,
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

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn load(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        Config::from_toml_with_env(text, Path::new("test.toml"), env)
    }

    #[test]
    fn a_non_loopback_listener_needs_a_read_token_too() {
        let exposed = "[server]\nlisten = \"0.0.0.0:9645\"\n";
        let err = load(exposed, &[("TENANTWATCH_AUTH_TOKEN", "w")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("server.listen"), "{err}");
        assert!(err.contains("TENANTWATCH_READ_TOKEN"), "{err}");
        assert!(!err.contains("TENANTWATCH_AUTH_TOKEN"), "{err}");
        let err = load(exposed, &[("TENANTWATCH_READ_TOKEN", "r")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("TENANTWATCH_AUTH_TOKEN"), "{err}");
        let both = [
            ("TENANTWATCH_AUTH_TOKEN", "w"),
            ("TENANTWATCH_READ_TOKEN", "r"),
        ];
        assert!(load(exposed, &both).is_ok());
        let on_purpose = "[server]\nlisten = \"0.0.0.0:9645\"\nallow_unauthenticated = true\n";
        assert!(load(on_purpose, &[("TENANTWATCH_AUTH_TOKEN", "w")]).is_ok());
        // Loopback needs neither.
        assert!(load("[server]\nlisten = \"127.0.0.1:9645\"\n", &[]).is_ok());
    }

    #[test]
    fn caller_patterns_match_whole_tenant_ids() {
        let dir = std::env::temp_dir().join(format!("tw-resolve-callers-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let token = dir.join("router");
        std::fs::write(&token, "router-token\n").unwrap();
        let mut settings = Settings::default();
        settings.ratelimit.callers.insert(
            "router".into(),
            crate::ratelimit::CallerSettings {
                token_file: token,
                tenants: vec!["clinic1".into(), "^lab[0-9]+$".into(), "a|b".into()],
            },
        );
        let mut v = Problems::default();
        let callers = callers(&mut v, &settings);
        assert_eq!(callers.len(), 1);
        let router = &callers[0];
        for allowed in ["clinic1", "lab7", "a", "b"] {
            assert!(router.may_check(allowed), "{allowed}");
        }
        for refused in [
            "xclinic12",
            "clinic12",
            "xclinic1",
            "lab7x",
            "ab",
            "xa",
            "b\n",
        ] {
            assert!(!router.may_check(refused), "{refused:?}");
        }
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn a_pattern_that_would_escape_its_anchors_is_refused() {
        assert!(anchored("a)|(b").is_err());
        assert!(anchored("(").is_err());
        assert!(anchored("(?m)^x$").is_ok_and(|re| !re.is_match("x\ny")));
    }
}
