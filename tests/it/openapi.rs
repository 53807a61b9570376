//! The OpenAPI document describes every endpoint the server routes, and live
//! responses conform to it: each status is declared, and JSON bodies have the
//! declared types and required properties (a small validator over the
//! subset of JSON Schema the document uses: `$ref`, `type`, `required`,
//! `properties`, `items`, `enum`, `oneOf`).

use crate::support;

use crate::support::TestDaemon;
use serde_json::Value;

fn resolve<'a>(doc: &'a Value, schema: &'a Value) -> &'a Value {
    match schema["$ref"].as_str() {
        Some(reference) => {
            let name = reference.trim_start_matches("#/components/schemas/");
            &doc["components"]["schemas"][name]
        }
        None => schema,
    }
}

fn type_matches(expected: &str, value: &Value) -> bool {
    match expected {
        "object" => value.is_object(),
        "array" => value.is_array(),
        "string" => value.is_string(),
        "boolean" => value.is_boolean(),
        "integer" => value.is_u64() || value.is_i64(),
        "number" => value.is_number(),
        "null" => value.is_null(),
        _ => false,
    }
}

fn validate(doc: &Value, schema: &Value, value: &Value, at: &str, errors: &mut Vec<String>) {
    let schema = resolve(doc, schema);
    if let Some(choices) = schema["oneOf"].as_array() {
        // Valid when exactly one alternative holds.
        let holding = choices
            .iter()
            .filter(|choice| {
                let mut found = Vec::new();
                validate(doc, choice, value, at, &mut found);
                found.is_empty()
            })
            .count();
        if holding != 1 {
            errors.push(format!(
                "{at}: {value} holds {holding} of the oneOf alternatives"
            ));
        }
    }
    let types: Vec<&str> = match &schema["type"] {
        Value::String(t) => vec![t.as_str()],
        Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    if !types.is_empty() && !types.iter().any(|t| type_matches(t, value)) {
        errors.push(format!("{at}: {value} is not {types:?}"));
        return;
    }
    if let Some(options) = schema["enum"].as_array()
        && !options.contains(value)
    {
        errors.push(format!("{at}: {value} is not one of {options:?}"));
    }
    if let Some(object) = value.as_object() {
        for required in schema["required"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            if !object.contains_key(required) {
                errors.push(format!("{at}: missing {required}"));
            }
        }
        if let Some(properties) = schema["properties"].as_object() {
            for (name, property) in properties {
                if let Some(v) = object.get(name) {
                    validate(doc, property, v, &format!("{at}.{name}"), errors);
                }
            }
        }
    }
    if let (Some(items), Some(array)) = (schema.get("items"), value.as_array()) {
        for (i, item) in array.iter().enumerate().take(20) {
            validate(doc, items, item, &format!("{at}[{i}]"), errors);
        }
    }
}

/// Checks a live reply against the document's operation.
fn conforms(doc: &Value, path: &str, method: &str, reply: &support::HttpReply) -> Vec<String> {
    let operation = &doc["paths"][path][method];
    assert!(operation.is_object(), "{method} {path} is not documented");
    let response = &doc["paths"][path][method]["responses"][reply.status.to_string()];
    if response.is_null() {
        return vec![format!(
            "{method} {path}: status {} is not documented",
            reply.status
        )];
    }
    let response = match response["$ref"].as_str() {
        Some(r) => &doc["components"]["responses"][r.trim_start_matches("#/components/responses/")],
        None => response,
    };
    let content_type = reply
        .header("content-type")
        .unwrap_or_default()
        .split(';')
        .next()
        .unwrap_or_default()
        .to_owned();
    let Some(content) = response["content"].as_object() else {
        return Vec::new();
    };
    let Some(media) = content.get(&content_type) else {
        return vec![format!(
            "{method} {path}: content type {content_type} is not documented"
        )];
    };
    let mut errors = Vec::new();
    if content_type.contains("json") {
        validate(
            doc,
            &media["schema"],
            &reply.json(),
            &format!("{method} {path}"),
            &mut errors,
        );
    }
    errors
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_responses_conform_to_the_openapi_document() {
    let daemon = TestDaemon::start().await;
    let reply = daemon.get("/api/v1/openapi.json").await;
    assert_eq!(reply.status, 200);
    let doc = reply.json();
    assert_eq!(doc["openapi"], "3.1.0");
    let documented: Vec<&str> = doc["paths"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    for path in [
        "/metrics",
        "/healthz",
        "/readyz",
        "/v1/events",
        "/v1/ratelimit/check",
        "/api/v1/flags",
        "/api/v1/advice",
        "/api/v1/guard",
        "/api/v1/tenants",
        "/api/v1/tenants/{tenant}",
        "/api/v1/targets",
        "/api/v1/capacity",
        "/api/v1/openapi.json",
    ] {
        assert!(documented.contains(&path), "{path} is not documented");
    }

    let mut errors = Vec::new();
    let events = daemon
        .post(
            "/v1/events",
            &[("content-type", "application/x-ndjson")],
            "tenantwatch.query:1|ms|#tenant:t1\nbad\n",
        )
        .await;
    errors.extend(conforms(&doc, "/v1/events", "post", &events));
    let none = daemon
        .post(
            "/v1/events",
            &[("content-type", "application/x-ndjson")],
            "bad",
        )
        .await;
    errors.extend(conforms(&doc, "/v1/events", "post", &none));
    let unsupported = daemon
        .post("/v1/events", &[("content-type", "application/xml")], "<a/>")
        .await;
    errors.extend(conforms(&doc, "/v1/events", "post", &unsupported));
    for body in [
        r#"{"tenant":"t1"}"#,
        r#"{"tenant":"t1","cost":100000}"#,
        r#"{"checks":[{"tenant":"t1"},{"tenant":"t2","cost":2}]}"#,
        r#"{"checks":[{"tenant":"t1","cost":100000}]}"#,
        "nope",
    ] {
        let reply = daemon
            .post(
                "/v1/ratelimit/check",
                &[("content-type", "application/json")],
                body,
            )
            .await;
        errors.extend(conforms(&doc, "/v1/ratelimit/check", "post", &reply));
    }
    for (path, template) in [
        ("/metrics", "/metrics"),
        ("/healthz", "/healthz"),
        ("/readyz", "/readyz"),
        ("/api/v1/flags", "/api/v1/flags"),
        ("/api/v1/advice", "/api/v1/advice"),
        ("/api/v1/guard", "/api/v1/guard"),
        ("/api/v1/tenants", "/api/v1/tenants"),
        ("/api/v1/tenants?format=csv", "/api/v1/tenants"),
        ("/api/v1/tenants?sort=nope", "/api/v1/tenants"),
        ("/api/v1/tenants/t1", "/api/v1/tenants/{tenant}"),
        ("/api/v1/tenants/nobody", "/api/v1/tenants/{tenant}"),
        ("/api/v1/targets", "/api/v1/targets"),
        ("/api/v1/capacity", "/api/v1/capacity"),
        ("/api/v1/openapi.json", "/api/v1/openapi.json"),
    ] {
        let reply = daemon.get(path).await;
        errors.extend(conforms(&doc, template, "get", &reply));
    }
    assert!(
        errors.is_empty(),
        "responses that do not match the document:\n{}",
        errors.join("\n")
    );
    daemon.stop().await;
}
