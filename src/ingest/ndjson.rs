//! NDJSON event lines:
//! `{"tenant":"clinic1","kind":"read","duration_ms":12.5,"rows":100,"error":false}`.
//!
//! Every field is read as a loosely typed scalar first and checked after, so a
//! wrong type is reported against the field it is in (`invalid_kind`,
//! `invalid_duration`, …) rather than as a generic syntax error. Unknown
//! fields are ignored, so applications can add their own (a timestamp, a
//! request id) without being refused.

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use crate::event::{
    Event, QueryKind, Reject, RejectReason, Sample, validate_count, validate_duration_ms,
    validate_label, validate_tenant,
};

/// A JSON value reduced to what the event fields can hold.
#[derive(Debug)]
enum Scalar<'a> {
    Str(Cow<'a, str>),
    Num(f64),
    Bool(bool),
    Null,
    /// An object or an array: never a valid field value here.
    Compound,
}

impl<'de: 'a, 'a> Deserialize<'de> for Scalar<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ScalarVisitor<'a>(std::marker::PhantomData<&'a ()>);

        impl<'de: 'a, 'a> Visitor<'de> for ScalarVisitor<'a> {
            type Value = Scalar<'a>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
                Ok(Scalar::Bool(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(Scalar::Num(v as f64))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(Scalar::Num(v as f64))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
                Ok(Scalar::Num(v))
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Scalar::Str(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Scalar::Str(Cow::Owned(v.to_owned())))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Scalar::Null)
            }
            fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Scalar::Null)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Scalar::Compound)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Scalar::Compound)
            }
        }

        deserializer.deserialize_any(ScalarVisitor(std::marker::PhantomData))
    }
}

#[derive(Deserialize)]
struct WireEvent<'a> {
    #[serde(borrow, default)]
    tenant: Option<Scalar<'a>>,
    #[serde(borrow, default)]
    kind: Option<Scalar<'a>>,
    #[serde(borrow, default)]
    duration_ms: Option<Scalar<'a>>,
    #[serde(borrow, default)]
    rows: Option<Scalar<'a>>,
    #[serde(borrow, default)]
    error: Option<Scalar<'a>>,
    #[serde(borrow, default)]
    endpoint: Option<Scalar<'a>>,
    #[serde(borrow, default)]
    instance: Option<Scalar<'a>>,
}

/// An optional `endpoint` or `instance`: a string that can be a label value.
fn label<'a>(field: Option<Scalar<'a>>) -> Result<Option<Cow<'a, str>>, Reject> {
    match field {
        None | Some(Scalar::Null) => Ok(None),
        Some(Scalar::Str(value)) => {
            validate_label(&value)?;
            Ok(Some(value))
        }
        Some(_) => Err(Reject::new(
            RejectReason::InvalidLabel,
            "endpoint and instance must be strings",
        )),
    }
}

/// Parses one NDJSON line (without its newline).
pub fn parse_line(line: &str) -> Result<Event<'_>, Reject> {
    // serde would also read a struct from a JSON array; an event is an object.
    if !line.trim_start().starts_with('{') {
        return Err(Reject::new(
            RejectReason::Malformed,
            "an event must be a JSON object",
        ));
    }
    let wire: WireEvent<'_> = serde_json::from_str(line).map_err(|err| Reject {
        reason: RejectReason::Malformed,
        detail: Cow::Owned(format!("invalid JSON event: {err}")),
    })?;

    let tenant = match wire.tenant {
        Some(Scalar::Str(tenant)) => tenant,
        None | Some(Scalar::Null) => {
            return Err(Reject::new(
                RejectReason::MissingField,
                "missing field tenant",
            ));
        }
        Some(_) => {
            return Err(Reject::new(
                RejectReason::InvalidTenant,
                "tenant must be a string",
            ));
        }
    };
    validate_tenant(&tenant)?;

    // `schema_switch` is the time to switch a session to the tenant, not a
    // query: it has no kind of its own.
    let schema_switch = matches!(&wire.kind, Some(Scalar::Str(kind)) if kind == "schema_switch");
    let kind = match wire.kind {
        _ if schema_switch => QueryKind::Other,
        Some(Scalar::Str(kind)) => QueryKind::parse(&kind).ok_or(Reject::new(
            RejectReason::InvalidKind,
            "kind must be read, write, other or schema_switch",
        ))?,
        None | Some(Scalar::Null) => {
            return Err(Reject::new(
                RejectReason::MissingField,
                "missing field kind",
            ));
        }
        Some(_) => {
            return Err(Reject::new(
                RejectReason::InvalidKind,
                "kind must be read, write, other or schema_switch",
            ));
        }
    };

    let duration_ms = match wire.duration_ms {
        Some(Scalar::Num(ms)) => validate_duration_ms(ms)?,
        None | Some(Scalar::Null) => {
            return Err(Reject::new(
                RejectReason::MissingField,
                "missing field duration_ms",
            ));
        }
        Some(_) => {
            return Err(Reject::new(
                RejectReason::InvalidDuration,
                "duration_ms must be a number",
            ));
        }
    };

    let rows = match wire.rows {
        None | Some(Scalar::Null) => 0.0,
        Some(Scalar::Num(rows)) if rows >= 0.0 && rows.fract() == 0.0 && rows.is_finite() => {
            validate_count(rows)?
        }
        Some(_) => {
            return Err(Reject::new(
                RejectReason::InvalidValue,
                "rows must be a non-negative integer",
            ));
        }
    };

    let error = match wire.error {
        None | Some(Scalar::Null) => false,
        Some(Scalar::Bool(error)) => error,
        Some(_) => {
            return Err(Reject::new(
                RejectReason::InvalidValue,
                "error must be true or false",
            ));
        }
    };

    let endpoint = label(wire.endpoint)?;
    let instance = label(wire.instance)?;
    let sample = if schema_switch {
        Sample::SchemaSwitch {
            duration_ms,
            weight: 1.0,
        }
    } else {
        Sample::Query {
            duration_ms,
            rows,
            error,
            weight: 1.0,
        }
    };
    Ok(Event {
        tenant,
        kind,
        sample,
        endpoint,
        instance,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn reason(line: &str) -> RejectReason {
        parse_line(line)
            .expect_err("line should be rejected")
            .reason
    }

    #[test]
    fn endpoint_instance_and_schema_switch() {
        let event = parse_line(
            r#"{"tenant":"t1","kind":"read","duration_ms":8,"endpoint":"GET /patients/{id}","instance":"web-7d9f"}"#,
        )
        .unwrap();
        assert_eq!(event.endpoint.as_deref(), Some("GET /patients/{id}"));
        assert_eq!(event.instance.as_deref(), Some("web-7d9f"));
        let switch =
            parse_line(r#"{"tenant":"t1","kind":"schema_switch","duration_ms":0.4}"#).unwrap();
        assert_eq!(
            switch.sample,
            Sample::SchemaSwitch {
                duration_ms: 0.4,
                weight: 1.0
            }
        );
        for bad in [
            r#"{"tenant":"t1","kind":"read","duration_ms":1,"endpoint":""}"#,
            r#"{"tenant":"t1","kind":"read","duration_ms":1,"endpoint":"__other__"}"#,
            r#"{"tenant":"t1","kind":"read","duration_ms":1,"endpoint":"a\"b"}"#,
            r#"{"tenant":"t1","kind":"read","duration_ms":1,"instance":7}"#,
            r#"{"tenant":"t1","kind":"read","duration_ms":1,"instance":"tab\there"}"#,
        ] {
            assert_eq!(
                parse_line(bad).unwrap_err().reason,
                RejectReason::InvalidLabel,
                "{bad}"
            );
        }
        let long = format!(
            r#"{{"tenant":"t1","kind":"read","duration_ms":1,"endpoint":"{}"}}"#,
            "e".repeat(129)
        );
        assert_eq!(
            parse_line(&long).unwrap_err().reason,
            RejectReason::InvalidLabel
        );
    }

    #[test]
    fn parses_the_documented_example() {
        let event = parse_line(
            r#"{"tenant":"clinic1","kind":"read","duration_ms":12.5,"rows":100,"error":false}"#,
        )
        .unwrap();
        assert_eq!(event.tenant, "clinic1");
        assert!(matches!(event.tenant, Cow::Borrowed(_)));
        assert_eq!(event.kind, QueryKind::Read);
        assert_eq!(
            event.sample,
            Sample::Query {
                duration_ms: 12.5,
                rows: 100.0,
                error: false,
                weight: 1.0
            }
        );
    }

    #[test]
    fn optional_fields_and_unknown_fields() {
        let event =
            parse_line(r#"{"tenant":"t1","kind":"write","duration_ms":3,"ts":123,"x":{"a":[1]}}"#)
                .unwrap();
        assert_eq!(
            event.sample,
            Sample::Query {
                duration_ms: 3.0,
                rows: 0.0,
                error: false,
                weight: 1.0
            }
        );
    }

    #[test]
    fn escaped_tenant_is_unescaped() {
        let event = parse_line(r#"{"tenant":"t\u0031","kind":"other","duration_ms":1}"#).unwrap();
        assert_eq!(event.tenant, "t1");
    }

    #[test]
    fn each_bad_field_has_its_reason() {
        assert_eq!(reason("not json"), RejectReason::Malformed);
        assert_eq!(reason("[1,2]"), RejectReason::Malformed);
        assert_eq!(
            reason(r#"{"tenant":"a","kind":"read"}"#),
            RejectReason::MissingField
        );
        assert_eq!(
            reason(r#"{"kind":"read","duration_ms":1}"#),
            RejectReason::MissingField
        );
        assert_eq!(
            reason(r#"{"tenant":5,"kind":"read","duration_ms":1}"#),
            RejectReason::InvalidTenant
        );
        assert_eq!(
            reason(r#"{"tenant":"a b","kind":"read","duration_ms":1}"#),
            RejectReason::InvalidTenant
        );
        assert_eq!(
            reason(r#"{"tenant":"a","kind":"select","duration_ms":1}"#),
            RejectReason::InvalidKind
        );
        assert_eq!(
            reason(r#"{"tenant":"a","kind":"read","duration_ms":-1}"#),
            RejectReason::InvalidDuration
        );
        assert_eq!(
            reason(r#"{"tenant":"a","kind":"read","duration_ms":"12"}"#),
            RejectReason::InvalidDuration
        );
        assert_eq!(
            reason(r#"{"tenant":"a","kind":"read","duration_ms":1e400}"#),
            RejectReason::Malformed
        );
        assert_eq!(
            reason(r#"{"tenant":"a","kind":"read","duration_ms":1,"rows":-3}"#),
            RejectReason::InvalidValue
        );
        assert_eq!(
            reason(r#"{"tenant":"a","kind":"read","duration_ms":1,"rows":1.5}"#),
            RejectReason::InvalidValue
        );
        assert_eq!(
            reason(r#"{"tenant":"a","kind":"read","duration_ms":1,"error":"yes"}"#),
            RejectReason::InvalidValue
        );
        assert_eq!(
            reason(r#"{"tenant":"a","tenant":"b","kind":"read","duration_ms":1}"#),
            RejectReason::Malformed
        );
    }

    proptest! {
        #[test]
        fn never_panics_on_arbitrary_text(line in ".{0,200}") {
            let _ = parse_line(&line);
        }

        #[test]
        fn valid_events_round_trip(
            tenant in "[a-z0-9][a-z0-9_.-]{0,40}",
            kind in prop::sample::select(vec!["read", "write", "other"]),
            duration_ms in 0.0f64..86_400_000.0,
            rows in 0u32..1_000_000,
            error in any::<bool>(),
        ) {
            let line = serde_json::json!({
                "tenant": tenant, "kind": kind, "duration_ms": duration_ms,
                "rows": rows, "error": error,
            }).to_string();
            let event = parse_line(&line).unwrap();
            prop_assert_eq!(event.tenant.as_ref(), tenant.as_str());
            prop_assert_eq!(event.kind.as_str(), kind);
            prop_assert_eq!(event.sample, Sample::Query {
                duration_ms, rows: f64::from(rows), error, weight: 1.0,
            });
        }
    }
}
