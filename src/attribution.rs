//! Tenant attribution: which tenant a schema, a session or a query belongs
//! to, by ordered rules. The first rule that matches decides.
//!
//! A rule reads one source (schema name, database name, role name,
//! `application_name`, or a sqlcommenter tag in the query text) and matches a
//! regular expression whose named group `tenant` is the tenant id. Whatever
//! no rule matches is not a tenant (it still counts at target level).

use std::borrow::Cow;

use std::path::PathBuf;

use regex::Regex;
use serde::Deserialize;

use crate::event::validate_tenant;
use crate::settings::{Problems, Reload};

/// `[tenants]`: how activity and schemas are attributed to tenants.
#[derive(Debug, Clone, PartialEq, Deserialize, Reload)]
#[serde(default, deny_unknown_fields)]
pub struct TenantSettings {
    /// Ordered rules; the first that matches decides.
    pub rules: Vec<RuleSettings>,
    /// One `tenant,tier` per line: each tenant's tier (for
    /// `tenantwatch_tenant_info`, the API, and `[ratelimit.tiers]` quotas).
    /// Re-read on SIGHUP.
    #[reload(live)]
    pub tiers_file: Option<PathBuf>,
    /// One tenant id per line: the tenants that must have a schema or a
    /// database on every target with a `group`. Re-read on SIGHUP.
    #[reload(live)]
    pub expected_file: Option<PathBuf>,
    /// Sessions that are maintenance, not a tenant's work (pg_dump,
    /// migration tools, vacuum scripts): never charged to a tenant.
    pub exclude: Vec<ExcludeSettings>,
}

impl Default for TenantSettings {
    fn default() -> Self {
        TenantSettings {
            rules: vec![
                RuleSettings {
                    source: RuleSource::Schema,
                    pattern: "^tenant_(?P<tenant>.+)$".into(),
                    key: None,
                },
                RuleSettings {
                    source: RuleSource::QueryComment,
                    pattern: "^(?P<tenant>.+)$".into(),
                    key: None,
                },
            ],
            tiers_file: None,
            expected_file: None,
            exclude: Vec::new(),
        }
    }
}

/// `[[tenants.rules]]`.
#[derive(Debug, Clone, PartialEq, Deserialize, Reload)]
#[serde(deny_unknown_fields)]
pub struct RuleSettings {
    /// `schema`, `database`, `role`, `application_name` or `query_comment`.
    pub source: RuleSource,
    /// Regular expression with a named group `tenant`.
    pub pattern: String,
    /// For `query_comment`: the sqlcommenter key (default `tenant`).
    #[serde(default)]
    pub key: Option<String>,
}

/// `[[tenants.exclude]]`.
#[derive(Debug, Clone, PartialEq, Deserialize, Reload)]
#[serde(deny_unknown_fields)]
pub struct ExcludeSettings {
    /// `application_name`, `role` or `database`.
    pub source: RuleSource,
    /// Regular expression matched against that source.
    pub pattern: String,
}

impl TenantSettings {
    /// The rules and exclusions compiled; bad patterns and misplaced keys
    /// are reported by their dotted names.
    pub fn compile(&self, p: &mut Problems) -> Attribution {
        let mut rules = Vec::new();
        for (i, rule) in self.rules.iter().enumerate() {
            let key = |field: &str| format!("tenants.rules[{i}].{field}");
            let pattern = match Regex::new(&rule.pattern) {
                Ok(pattern) if pattern.capture_names().any(|n| n == Some("tenant")) => {
                    Some(pattern)
                }
                Ok(_) => {
                    p.fail(
                        &key("pattern"),
                        format!("{:?}", rule.pattern),
                        "needs a named group (?P<tenant>...)",
                    );
                    None
                }
                Err(err) => {
                    p.fail(
                        &key("pattern"),
                        format!("{:?}", rule.pattern),
                        format!("not a regular expression: {err}"),
                    );
                    None
                }
            };
            if rule.key.is_some() && rule.source != RuleSource::QueryComment {
                p.fail(
                    &key("key"),
                    format!("{:?}", rule.key),
                    "only query_comment rules take a key",
                );
            }
            if let Some(pattern) = pattern {
                rules.push(Rule {
                    source: rule.source,
                    pattern,
                    comment_key: rule.key.clone().unwrap_or_else(|| "tenant".into()),
                });
            }
        }
        let mut exclusions = Vec::new();
        for (i, exclude) in self.exclude.iter().enumerate() {
            let key = |field: &str| format!("tenants.exclude[{i}].{field}");
            if !matches!(
                exclude.source,
                RuleSource::ApplicationName | RuleSource::Role | RuleSource::Database
            ) {
                p.fail(
                    &key("source"),
                    format!("{:?}", exclude.source),
                    "must be application_name, role or database",
                );
                continue;
            }
            match Regex::new(&exclude.pattern) {
                Ok(pattern) => exclusions.push(Exclusion {
                    source: exclude.source,
                    pattern,
                }),
                Err(err) => p.fail(
                    &key("pattern"),
                    format!("{:?}", exclude.pattern),
                    format!("not a regular expression: {err}"),
                ),
            }
        }
        Attribution::new(rules).with_exclusions(exclusions)
    }
}

/// What a rule reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RuleSource {
    Schema,
    Database,
    Role,
    ApplicationName,
    QueryComment,
}

impl RuleSource {
    pub fn parse(text: &str) -> Option<RuleSource> {
        match text {
            "schema" => Some(RuleSource::Schema),
            "database" => Some(RuleSource::Database),
            "role" => Some(RuleSource::Role),
            "application_name" => Some(RuleSource::ApplicationName),
            "query_comment" => Some(RuleSource::QueryComment),
            _ => None,
        }
    }
}

/// One validated rule.
#[derive(Debug, Clone)]
pub struct Rule {
    pub source: RuleSource,
    pub pattern: Regex,
    /// For `query_comment`: the sqlcommenter key holding the tenant.
    pub comment_key: String,
}

/// A backend as `pg_stat_activity` shows it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Session<'a> {
    pub database: &'a str,
    pub role: &'a str,
    pub application_name: &'a str,
    pub query: &'a str,
}

/// A maintenance session pattern (`[[tenants.exclude]]`): pg_dump, a
/// migration tool, a vacuum script. Its sessions belong to no tenant.
#[derive(Debug, Clone)]
pub struct Exclusion {
    /// `ApplicationName`, `Role` or `Database`.
    pub source: RuleSource,
    pub pattern: Regex,
}

/// The ordered rules, and the maintenance exclusions that come before them.
#[derive(Debug, Clone, Default)]
pub struct Attribution {
    rules: Vec<Rule>,
    exclusions: Vec<Exclusion>,
}

impl Attribution {
    pub fn new(rules: Vec<Rule>) -> Attribution {
        Attribution {
            rules,
            exclusions: Vec::new(),
        }
    }

    /// These rules with maintenance exclusions.
    pub fn with_exclusions(self, exclusions: Vec<Exclusion>) -> Attribution {
        Attribution { exclusions, ..self }
    }

    /// Whether a session is maintenance (`[[tenants.exclude]]`): counted at
    /// target level as such, never in a tenant's figures or flags.
    pub fn is_maintenance(&self, session: &Session<'_>) -> bool {
        self.exclusions.iter().any(|e| {
            let text = match e.source {
                RuleSource::ApplicationName => session.application_name,
                RuleSource::Role => session.role,
                RuleSource::Database => session.database,
                RuleSource::Schema | RuleSource::QueryComment => return false,
            };
            e.pattern.is_match(text)
        })
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// The tenant of a schema in a database (schema and database rules).
    pub fn schema_tenant(&self, database: &str, schema: &str) -> Option<String> {
        self.schema_tenant_by(database, schema)
            .map(|(tenant, _)| tenant)
    }

    /// As [`Attribution::schema_tenant`], with the source of the rule that
    /// decided (`Schema` or `Database`).
    pub fn schema_tenant_by(&self, database: &str, schema: &str) -> Option<(String, RuleSource)> {
        self.rules.iter().find_map(|rule| {
            let tenant = match rule.source {
                RuleSource::Schema => capture(&rule.pattern, schema),
                RuleSource::Database => capture(&rule.pattern, database),
                _ => None,
            };
            tenant.map(|tenant| (tenant, rule.source))
        })
    }

    /// The tenant of a backend (database, role, application and query rules).
    pub fn session_tenant(&self, session: &Session<'_>) -> Option<String> {
        self.session_tenant_by(session).map(|(tenant, _)| tenant)
    }

    /// The tenant of a backend and the source of the rule that decided.
    pub fn session_tenant_by(&self, session: &Session<'_>) -> Option<(String, RuleSource)> {
        self.rules.iter().find_map(|rule| {
            let tenant = match rule.source {
                RuleSource::Schema => None,
                RuleSource::Database => capture(&rule.pattern, session.database),
                RuleSource::Role => capture(&rule.pattern, session.role),
                RuleSource::ApplicationName => capture(&rule.pattern, session.application_name),
                RuleSource::QueryComment => comment_tag(session.query, &rule.comment_key)
                    .and_then(|value| capture(&rule.pattern, &value)),
            };
            tenant.map(|tenant| (tenant, rule.source))
        })
    }
}

fn capture(pattern: &Regex, text: &str) -> Option<String> {
    let tenant = pattern.captures(text)?.name("tenant")?.as_str();
    validate_tenant(tenant).ok()?;
    Some(tenant.to_owned())
}

/// The value of `key` in a sqlcommenter comment (`/*key='value',…*/`) at the
/// start or the end of `query`. `pg_stat_activity.query` is cut at
/// `track_activity_query_size`, so a trailing comment on a long query may be
/// gone; a leading one survives.
pub fn comment_tag<'q>(query: &'q str, key: &str) -> Option<Cow<'q, str>> {
    let trimmed = query.trim();
    let leading = trimmed
        .strip_prefix("/*")
        .and_then(|rest| rest.split_once("*/"))
        .map(|(comment, _)| comment);
    let trailing = trimmed
        .trim_end_matches(';')
        .trim_end()
        .strip_suffix("*/")
        .and_then(|rest| rest.rsplit_once("/*"))
        .map(|(_, comment)| comment);
    [leading, trailing]
        .into_iter()
        .flatten()
        .find_map(|comment| tag_value(comment, key))
}

fn tag_value<'q>(comment: &'q str, key: &str) -> Option<Cow<'q, str>> {
    for pair in comment.split(',') {
        let Some((k, v)) = pair.split_once('=') else {
            continue;
        };
        if k.trim() != key {
            continue;
        }
        let v = v.trim();
        let v = v
            .strip_prefix('\'')
            .and_then(|v| v.strip_suffix('\''))
            .unwrap_or(v);
        return Some(percent_decode(v));
    }
    None
}

/// sqlcommenter URL-encodes values; tenant ids rarely need it, but decode
/// `%XX` so that they compare equal either way.
fn percent_decode(value: &str) -> Cow<'_, str> {
    if !value.contains('%') {
        return Cow::Borrowed(value);
    }
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Some(byte) = std::str::from_utf8(&bytes[i + 1..i + 3])
                .ok()
                .and_then(|hex| u8::from_str_radix(hex, 16).ok())
        {
            out.push(byte);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(source: RuleSource, pattern: &str) -> Rule {
        Rule {
            source,
            pattern: Regex::new(pattern).unwrap(),
            comment_key: "tenant".into(),
        }
    }

    #[test]
    fn first_matching_rule_wins() {
        let attribution = Attribution::new(vec![
            rule(RuleSource::Schema, "^tenant_(?P<tenant>.+)$"),
            rule(
                RuleSource::Database,
                "^tenant_(?P<tenant>[a-z0-9]+)_[a-z]+$",
            ),
            rule(RuleSource::Role, "^app_(?P<tenant>.+)$"),
            rule(RuleSource::ApplicationName, "^web-(?P<tenant>.+)$"),
            rule(RuleSource::QueryComment, "^(?P<tenant>.+)$"),
        ]);
        assert_eq!(
            attribution
                .schema_tenant("app", "tenant_clinic1")
                .as_deref(),
            Some("clinic1")
        );
        assert_eq!(attribution.schema_tenant("app", "public"), None);
        assert_eq!(
            attribution
                .schema_tenant("tenant_acme_core", "public")
                .as_deref(),
            Some("acme")
        );
        let session = |database, role, application_name, query| Session {
            database,
            role,
            application_name,
            query,
        };
        assert_eq!(
            attribution
                .session_tenant(&session("tenant_acme_identity", "x", "", ""))
                .as_deref(),
            Some("acme")
        );
        assert_eq!(
            attribution
                .session_tenant(&session("app", "app_dental7", "", ""))
                .as_deref(),
            Some("dental7")
        );
        assert_eq!(
            attribution
                .session_tenant(&session("app", "x", "web-clinic9", ""))
                .as_deref(),
            Some("clinic9")
        );
        assert_eq!(
            attribution
                .session_tenant(&session(
                    "app",
                    "x",
                    "psql",
                    "SELECT 1 /*tenant='c4',route='/x'*/"
                ))
                .as_deref(),
            Some("c4")
        );
        assert_eq!(
            attribution.session_tenant(&session("app", "x", "psql", "SELECT 1")),
            None
        );
    }

    #[test]
    fn comment_tags_at_either_end() {
        assert_eq!(
            comment_tag("/* tenant='a1' */ SELECT 1", "tenant").as_deref(),
            Some("a1")
        );
        assert_eq!(
            comment_tag("SELECT 1 /*tenant='a2'*/;", "tenant").as_deref(),
            Some("a2")
        );
        assert_eq!(
            comment_tag("SELECT 1 /*action='x',tenant='a%2F3'*/", "tenant").as_deref(),
            Some("a/3")
        );
        assert_eq!(
            comment_tag("SELECT 1 /*tenant=a4*/", "tenant").as_deref(),
            Some("a4")
        );
        assert_eq!(comment_tag("SELECT '/*tenant=x*/' || 1", "tenant"), None);
        assert_eq!(comment_tag("/*org='o'*/ SELECT 1", "tenant"), None);
        // A truncated trailing comment is simply not found.
        assert_eq!(comment_tag("SELECT 1 /*tenant='a", "tenant"), None);
        assert_eq!(
            comment_tag("/*tenant='%zz'*/", "tenant").as_deref(),
            Some("%zz")
        );
    }

    #[test]
    fn invalid_tenant_ids_are_not_tenants() {
        let attribution =
            Attribution::new(vec![rule(RuleSource::QueryComment, "^(?P<tenant>.*)$")]);
        let session = Session {
            query: "/*tenant='a b'*/ SELECT 1",
            ..Session::default()
        };
        assert_eq!(attribution.session_tenant(&session), None);
    }
}
