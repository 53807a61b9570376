//! What the environment does to the file before it is deserialized:
//! `${NAME}` expansion in string values (so one file serves every pod) and
//! `TENANTWATCH__SECTION__KEY=value` overrides.
//!
//! Written here rather than taken from a layered-configuration crate:
//! figment and config-rs read the process environment only (tests would
//! have to change it, which races between test threads), and neither has
//! `${NAME}` expansion with the `$${` escape and the "other `$` stays"
//! rule that regular expressions in this file rely on.

use super::InvalidKey;

/// Prefix of environment variables that override file keys.
pub const ENV_OVERRIDE_PREFIX: &str = "TENANTWATCH__";

/// The overrides in `env`: each key's path (lowercased, split at `__`) and
/// its value.
pub(super) fn overrides(env: &[(String, String)]) -> Vec<(Vec<String>, &str)> {
    env.iter()
        .filter_map(|(key, value)| {
            let rest = key.strip_prefix(ENV_OVERRIDE_PREFIX)?;
            let path = rest.split("__").map(str::to_ascii_lowercase).collect();
            Some((path, value.as_str()))
        })
        .collect()
}

/// Replaces `${NAME}` in every string value of `table` (at any depth) with
/// the variable `NAME` of `env`, so that one file serves every pod
/// (`name = "${POD_NAME}"`); `$${` writes a literal `${`. A variable that is
/// not set is an invalid key, named with the variable.
pub(super) fn expand_env(
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
pub(super) fn expand_text(text: &str, env: &[(String, String)]) -> (String, Vec<String>) {
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

pub(super) fn apply_override(
    table: &mut toml::Table,
    path: &[String],
    raw: &str,
) -> Result<(), String> {
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
