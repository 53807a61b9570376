//! DogStatsD lines: `tenantwatch.query:12.5|ms|@0.5|#tenant:clinic1,kind:read`.
//!
//! The metric names tenantwatch understands (anything else is refused with
//! `unknown_metric`):
//!
//! | metric               | types          | meaning                                           |
//! |----------------------|----------------|---------------------------------------------------|
//! | `tenantwatch.query`  | `ms`, `h`, `d` | one query; the value is its duration in ms        |
//! | `tenantwatch.rows`   | `c`            | rows read or written                              |
//! | `tenantwatch.errors` | `c`            | failed queries                                    |
//!
//! Tags: `tenant` (required), `kind` (`read`, `write`, `other`; default
//! `other`), and on `tenantwatch.query` also `error:true` and `rows:N`. Other
//! tags are ignored. A sample rate `|@r` weighs the line by `1/r`, as the
//! Datadog agent does. Several values in one line (`name:1:2:3|ms`, protocol
//! v1.1) are several events. Sections the protocol added later (`|T`
//! timestamps, `|c:` container ids) are skipped. Sets, gauges, events
//! (`_e{`) and service checks (`_sc`) are refused with `unsupported_type`.

use std::borrow::Cow;

use crate::event::{
    Event, QueryKind, Reject, RejectReason, Sample, validate_count, validate_duration_ms,
    validate_label, validate_tenant,
};

/// At most this many values in one multi-value line; more is a malformed line.
const MAX_VALUES_PER_LINE: usize = 64;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Metric {
    Query,
    Rows,
    Errors,
    /// `tenantwatch.schema_switch`: the time to switch a session to the tenant.
    SchemaSwitch,
}

/// Splits on an ASCII byte with a plain scan: lines are short, and this beats
/// `str::split(char)`'s searcher set-up, which showed up in profiles.
struct SplitByte<'a> {
    rest: Option<&'a str>,
    separator: u8,
}

impl<'a> Iterator for SplitByte<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        let rest = self.rest?;
        match rest.bytes().position(|b| b == self.separator) {
            // Slicing next to an ASCII byte always lands on a char boundary.
            Some(at) => {
                self.rest = Some(&rest[at + 1..]);
                Some(&rest[..at])
            }
            None => {
                self.rest = None;
                Some(rest)
            }
        }
    }
}

fn split_byte(text: &str, separator: u8) -> SplitByte<'_> {
    SplitByte {
        rest: Some(text),
        separator,
    }
}

fn split_once_byte(text: &str, separator: u8) -> Option<(&str, &str)> {
    let at = text.bytes().position(|b| b == separator)?;
    Some((&text[..at], &text[at + 1..]))
}

/// Parses one DogStatsD line (without its newline) and hands each event it
/// holds to `emit`. Nothing is emitted unless the whole line is valid.
/// Returns how many events were emitted.
pub fn parse_line<'a>(
    line: &'a str,
    min_sample_rate: f64,
    mut emit: impl FnMut(Event<'a>),
) -> Result<usize, Reject> {
    if line.starts_with("_e{") || line.starts_with("_sc|") {
        return Err(Reject::new(
            RejectReason::UnsupportedType,
            "DogStatsD events and service checks are not accepted",
        ));
    }
    let mut sections = split_byte(line, b'|');
    let head = sections.next().unwrap_or_default();
    let (name, values) = split_once_byte(head, b':').ok_or(Reject::new(
        RejectReason::Malformed,
        "expected name:value|type",
    ))?;
    let metric_type = sections.next().ok_or(Reject::new(
        RejectReason::Malformed,
        "expected name:value|type",
    ))?;

    let metric = match name {
        "tenantwatch.query" => Metric::Query,
        "tenantwatch.rows" => Metric::Rows,
        "tenantwatch.errors" => Metric::Errors,
        "tenantwatch.schema_switch" => Metric::SchemaSwitch,
        _ => {
            return Err(Reject::new(
                RejectReason::UnknownMetric,
                "metric must be tenantwatch.query, tenantwatch.rows, tenantwatch.errors or tenantwatch.schema_switch",
            ));
        }
    };
    let type_ok = match metric {
        Metric::Query | Metric::SchemaSwitch => matches!(metric_type, "ms" | "h" | "d"),
        Metric::Rows | Metric::Errors => metric_type == "c",
    };
    if !type_ok {
        return Err(Reject::new(
            RejectReason::UnsupportedType,
            "tenantwatch.query and tenantwatch.schema_switch take ms, h or d; tenantwatch.rows and tenantwatch.errors take c",
        ));
    }

    let Sections {
        sample_rate,
        tenant,
        kind,
        error,
        rows,
        endpoint,
        instance,
    } = parse_sections(metric, sections)?;
    if sample_rate < min_sample_rate {
        // 1/rate weighs the line: a tiny rate would let one line outweigh a
        // fleet (or reach infinity), so it is refused, not clamped.
        return Err(Reject::new(
            RejectReason::InvalidSampleRate,
            "sample rate is below ingest.min_sample_rate",
        ));
    }
    let tenant = tenant.ok_or(Reject::new(
        RejectReason::MissingField,
        "missing tag tenant",
    ))?;
    validate_tenant(tenant)?;
    for label in [endpoint, instance].into_iter().flatten() {
        validate_label(label)?;
    }
    let weight = 1.0 / sample_rate;

    let make_event = |value: f64| Event {
        tenant: Cow::Borrowed(tenant),
        kind,
        sample: match metric {
            Metric::Query => Sample::Query {
                duration_ms: value,
                rows,
                error,
                weight,
            },
            Metric::Rows => Sample::Rows(value * weight),
            Metric::Errors => Sample::Errors(value * weight),
            Metric::SchemaSwitch => Sample::SchemaSwitch {
                duration_ms: value,
                weight,
            },
        },
        endpoint: endpoint.map(Cow::Borrowed),
        instance: instance.map(Cow::Borrowed),
    };
    if !values.bytes().any(|b| b == b':') {
        emit(make_event(parse_value(metric, values)?));
        return Ok(1);
    }
    // Several values (protocol v1.1): check them all before emitting any, so
    // a line is all or nothing.
    let mut count = 0;
    for value in split_byte(values, b':') {
        if count == MAX_VALUES_PER_LINE {
            return Err(Reject::new(
                RejectReason::Malformed,
                "more than 64 values in one line",
            ));
        }
        parse_value(metric, value)?;
        count += 1;
    }
    for value in split_byte(values, b':') {
        emit(make_event(parse_value(metric, value)?));
    }
    Ok(count)
}

/// What the `|@rate` and `|#tags` sections of a line say.
struct Sections<'a> {
    sample_rate: f64,
    tenant: Option<&'a str>,
    kind: QueryKind,
    error: bool,
    rows: f64,
    endpoint: Option<&'a str>,
    instance: Option<&'a str>,
}

fn parse_sections<'a>(
    metric: Metric,
    sections: impl Iterator<Item = &'a str>,
) -> Result<Sections<'a>, Reject> {
    let mut out = Sections {
        sample_rate: 1.0,
        tenant: None,
        kind: QueryKind::Other,
        error: false,
        rows: 0.0,
        endpoint: None,
        instance: None,
    };
    for section in sections {
        match section.as_bytes().first() {
            Some(b'@') => {
                out.sample_rate = section[1..]
                    .parse::<f64>()
                    .ok()
                    .filter(|r| r.is_finite() && *r > 0.0 && *r <= 1.0)
                    .ok_or(Reject::new(
                        RejectReason::InvalidSampleRate,
                        "sample rate must be a number in (0, 1]",
                    ))?;
            }
            Some(b'#') => {
                for tag in split_byte(&section[1..], b',') {
                    let (key, value) = split_once_byte(tag, b':').unwrap_or((tag, ""));
                    apply_tag(metric, key, value, &mut out)?;
                }
            }
            // `T<timestamp>`, `c:<container>`, `e:<external data>` and
            // sections of later protocol versions carry nothing we use.
            _ => {}
        }
    }
    Ok(out)
}

fn apply_tag<'a>(
    metric: Metric,
    key: &'a str,
    value: &'a str,
    out: &mut Sections<'a>,
) -> Result<(), Reject> {
    match key {
        "tenant" if out.tenant.is_none() => out.tenant = Some(value),
        "endpoint" if out.endpoint.is_none() => out.endpoint = Some(value),
        "instance" | "pod" if out.instance.is_none() => out.instance = Some(value),
        "kind" => {
            out.kind = QueryKind::parse(value).ok_or(Reject::new(
                RejectReason::InvalidKind,
                "kind must be read, write or other",
            ))?
        }
        "error" if metric == Metric::Query => {
            out.error = match value {
                "true" | "1" => true,
                "false" | "0" => false,
                _ => {
                    return Err(Reject::new(
                        RejectReason::InvalidValue,
                        "error tag must be true or false",
                    ));
                }
            }
        }
        "rows" if metric == Metric::Query => {
            let rows = value.parse::<u64>().map_err(|_| {
                Reject::new(
                    RejectReason::InvalidValue,
                    "rows tag must be a non-negative integer",
                )
            })?;
            out.rows = validate_count(rows as f64)?;
        }
        _ => {}
    }
    Ok(())
}

fn parse_value(metric: Metric, text: &str) -> Result<f64, Reject> {
    let parsed = match parse_plain_decimal(text) {
        Some(value) => Ok(value),
        None => text.parse::<f64>(),
    };
    let value = parsed.map_err(|_| match metric {
        Metric::Query | Metric::SchemaSwitch => {
            Reject::new(RejectReason::InvalidDuration, "value is not a number")
        }
        _ => Reject::new(RejectReason::InvalidValue, "value is not a number"),
    })?;
    match metric {
        Metric::Query | Metric::SchemaSwitch => validate_duration_ms(value),
        Metric::Rows | Metric::Errors => validate_count(value),
    }
}

/// Powers of ten that are exact in an `f64`.
const EXACT_POWERS_OF_TEN: [f64; 16] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
];

/// The values almost every client sends (`12`, `12.5`, `0.125`): digits
/// with at most one point and at most 15 of them. Those are an exact
/// integer over an exact power of ten, and one IEEE division of the two is
/// correctly rounded, so this gives what `str::parse` gives, without its
/// general machinery (signs, exponents, long inputs: `None`, and the caller
/// parses them the general way).
fn parse_plain_decimal(text: &str) -> Option<f64> {
    let mut mantissa: u64 = 0;
    let (mut digits, mut fraction_digits) = (0usize, None::<usize>);
    for byte in text.bytes() {
        match byte {
            b'0'..=b'9' => {
                digits += 1;
                if digits > 15 {
                    return None;
                }
                mantissa = mantissa * 10 + u64::from(byte - b'0');
                if let Some(fraction) = fraction_digits.as_mut() {
                    *fraction += 1;
                }
            }
            b'.' if fraction_digits.is_none() => fraction_digits = Some(0),
            _ => return None,
        }
    }
    if digits == 0 {
        return None;
    }
    Some(mantissa as f64 / EXACT_POWERS_OF_TEN[fraction_digits.unwrap_or(0)])
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn plain_decimals_parse_as_the_standard_library_does(
            text in "[0-9]{0,17}(\\.[0-9]{0,17})?",
        ) {
            if let Some(fast) = parse_plain_decimal(&text) {
                prop_assert_eq!(Ok(fast), text.parse::<f64>());
            } else {
                let digits = text.bytes().filter(u8::is_ascii_digit).count();
                prop_assert!(digits == 0 || digits > 15, "{text} fell back");
            }
        }
    }

    fn parse_all(line: &str) -> Result<Vec<Event<'_>>, Reject> {
        let mut events = Vec::new();
        parse_line(line, 0.001, |e| events.push(e))?;
        Ok(events)
    }

    fn reason(line: &str) -> RejectReason {
        parse_all(line).expect_err("line should be rejected").reason
    }

    #[test]
    fn endpoint_pod_and_schema_switch_tags() {
        let events =
            parse_all("tenantwatch.query:8|ms|#tenant:t1,endpoint:GET /p/{id},pod:web-1").unwrap();
        assert_eq!(events[0].endpoint.as_deref(), Some("GET /p/{id}"));
        assert_eq!(events[0].instance.as_deref(), Some("web-1"));
        let events = parse_all("tenantwatch.query:8|ms|#instance:web-2,tenant:t1").unwrap();
        assert_eq!(events[0].instance.as_deref(), Some("web-2"));
        let events = parse_all("tenantwatch.schema_switch:0.5|ms|@0.5|#tenant:t1").unwrap();
        assert_eq!(
            events[0].sample,
            Sample::SchemaSwitch {
                duration_ms: 0.5,
                weight: 2.0
            }
        );
        assert_eq!(
            reason("tenantwatch.query:1|ms|#tenant:t1,endpoint:__x"),
            RejectReason::InvalidLabel
        );
        assert_eq!(
            reason("tenantwatch.schema_switch:1|c|#tenant:t1"),
            RejectReason::UnsupportedType
        );
    }

    #[test]
    fn parses_the_documented_example() {
        let events = parse_all("tenantwatch.query:12.5|ms|#tenant:clinic1,kind:read").unwrap();
        assert_eq!(
            events,
            vec![Event {
                endpoint: None,
                instance: None,
                tenant: Cow::Borrowed("clinic1"),
                kind: QueryKind::Read,
                sample: Sample::Query {
                    duration_ms: 12.5,
                    rows: 0.0,
                    error: false,
                    weight: 1.0
                },
            }]
        );
    }

    #[test]
    fn sample_rate_multi_values_and_extra_sections() {
        let events = parse_all(
            "tenantwatch.query:1:2:3|h|@0.25|#env:prod,tenant:t9,kind:write,error:true,rows:7|T1700000000|c:abc",
        )
        .unwrap();
        assert_eq!(events.len(), 3);
        for (event, ms) in events.iter().zip([1.0, 2.0, 3.0]) {
            assert_eq!(event.tenant, "t9");
            assert_eq!(event.kind, QueryKind::Write);
            assert_eq!(
                event.sample,
                Sample::Query {
                    duration_ms: ms,
                    rows: 7.0,
                    error: true,
                    weight: 4.0
                }
            );
        }
        let rows = parse_all("tenantwatch.rows:10|c|@0.5|#tenant:t1,kind:read").unwrap();
        assert_eq!(rows[0].sample, Sample::Rows(20.0));
        let errors = parse_all("tenantwatch.errors:1|c|#tenant:t1").unwrap();
        assert_eq!(errors[0].sample, Sample::Errors(1.0));
        assert_eq!(errors[0].kind, QueryKind::Other);
    }

    #[test]
    fn each_bad_line_has_its_reason() {
        assert_eq!(reason("garbage"), RejectReason::Malformed);
        assert_eq!(reason("tenantwatch.query:1"), RejectReason::Malformed);
        assert_eq!(
            reason("other.metric:1|c|#tenant:a"),
            RejectReason::UnknownMetric
        );
        assert_eq!(
            reason("tenantwatch.query:1|s|#tenant:a"),
            RejectReason::UnsupportedType
        );
        assert_eq!(
            reason("tenantwatch.query:1|g|#tenant:a"),
            RejectReason::UnsupportedType
        );
        assert_eq!(
            reason("tenantwatch.rows:1|ms|#tenant:a"),
            RejectReason::UnsupportedType
        );
        assert_eq!(reason("_e{5,4}:title|text"), RejectReason::UnsupportedType);
        assert_eq!(reason("_sc|name|0"), RejectReason::UnsupportedType);
        assert_eq!(reason("tenantwatch.query:1|ms"), RejectReason::MissingField);
        assert_eq!(
            reason("tenantwatch.query:1|ms|#tenant:"),
            RejectReason::InvalidTenant
        );
        assert_eq!(
            reason("tenantwatch.query:1|ms|#tenant:a,kind:x"),
            RejectReason::InvalidKind
        );
        assert_eq!(
            reason("tenantwatch.query:-1|ms|#tenant:a"),
            RejectReason::InvalidDuration
        );
        assert_eq!(
            reason("tenantwatch.query:NaN|ms|#tenant:a"),
            RejectReason::InvalidDuration
        );
        assert_eq!(
            reason("tenantwatch.query:inf|ms|#tenant:a"),
            RejectReason::InvalidDuration
        );
        assert_eq!(
            reason("tenantwatch.query:1:x|ms|#tenant:a"),
            RejectReason::InvalidDuration
        );
        assert_eq!(
            reason("tenantwatch.query:1|ms|@0|#tenant:a"),
            RejectReason::InvalidSampleRate
        );
        assert_eq!(
            reason("tenantwatch.query:1|ms|@2|#tenant:a"),
            RejectReason::InvalidSampleRate
        );
        assert_eq!(
            reason("tenantwatch.rows:-4|c|#tenant:a"),
            RejectReason::InvalidValue
        );
        assert_eq!(
            reason("tenantwatch.query:1|ms|#tenant:a,rows:-1"),
            RejectReason::InvalidValue
        );
        let many = format!("tenantwatch.query:{}|ms|#tenant:a", vec!["1"; 65].join(":"));
        assert_eq!(reason(&many), RejectReason::Malformed);
    }

    #[test]
    fn a_bad_value_emits_nothing() {
        let mut emitted = 0;
        let result = parse_line("tenantwatch.query:1:2:oops|ms|#tenant:a", 0.001, |_| {
            emitted += 1
        });
        assert!(result.is_err());
        assert_eq!(emitted, 0);
    }

    proptest! {
        #[test]
        fn never_panics_on_arbitrary_text(line in ".{0,200}") {
            let _ = parse_all(&line);
        }

        #[test]
        fn never_panics_on_near_valid_lines(
            name in prop::sample::select(vec!["tenantwatch.query", "tenantwatch.rows", "x"]),
            value in "[-0-9.:eEinfNa]{0,12}",
            kind in prop::sample::select(vec!["ms", "c", "h", "s", ""]),
            rest in "[|@#:,a-z0-9.]{0,40}",
        ) {
            let _ = parse_all(&format!("{name}:{value}|{kind}{rest}"));
        }

        #[test]
        fn valid_timings_round_trip(
            tenant in "[a-z0-9][a-z0-9_.-]{0,40}",
            kind in prop::sample::select(vec!["read", "write", "other"]),
            duration_ms in 0.0f64..86_400_000.0,
            rate in prop::sample::select(vec![1.0, 0.5, 0.1, 0.01]),
        ) {
            let line = format!("tenantwatch.query:{duration_ms}|ms|@{rate}|#kind:{kind},tenant:{tenant}");
            let events = parse_all(&line).unwrap();
            prop_assert_eq!(events.len(), 1);
            prop_assert_eq!(events[0].tenant.as_ref(), tenant.as_str());
            prop_assert_eq!(events[0].kind.as_str(), kind);
            prop_assert_eq!(events[0].sample, Sample::Query {
                duration_ms, rows: 0.0, error: false, weight: 1.0 / rate,
            });
        }
    }
}
