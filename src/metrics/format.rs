//! The exposition formats `/metrics` serves and how a scraper's `Accept`
//! header picks one, as client_golang's `expfmt.NegotiateIncludingOpenMetrics`
//! does: the Prometheus protobuf format (the only one that carries native
//! histograms) when asked for, OpenMetrics when accepted, and the Prometheus
//! text format 0.0.4 otherwise — for `curl` without `Accept`, `*/*`, and the
//! older agents (Telegraf before OpenMetrics, some vendors' agents) that read
//! nothing else.
//!
//! The 0.0.4 text is derived from the OpenMetrics text
//! ([`openmetrics_to_text`], runs of samples copied whole): the two differ only in the family names of
//! counters (`# TYPE x_total counter`), the type names `unknown`/`info`, and
//! the `# UNIT` and `# EOF` lines; samples are the same bytes.

/// An exposition format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `application/openmetrics-text; version=1.0.0`.
    OpenMetrics,
    /// `text/plain; version=0.0.4`: the fallback.
    Text,
    /// `application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily;
    /// encoding=delimited`: with native histograms.
    Protobuf,
}

impl Format {
    pub const ALL: [Format; 3] = [Format::OpenMetrics, Format::Text, Format::Protobuf];

    /// The `Content-Type` of an answer in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Format::Text => "text/plain; version=0.0.4; charset=utf-8",
            Format::Protobuf => {
                "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited"
            }
        }
    }

    /// Position in [`Format::ALL`].
    pub fn index(self) -> usize {
        match self {
            Format::OpenMetrics => 0,
            Format::Text => 1,
            Format::Protobuf => 2,
        }
    }

    /// The format for an `Accept` header: the first of its media ranges,
    /// by descending `q` (in order of appearance among equals), that names
    /// a format served; [`Format::Text`] when none does or there is no
    /// header. `q=0` refuses a range. Wildcards (`*/*`, `text/*`) name no
    /// format, as in client_golang.
    pub fn negotiate(accept: Option<&str>) -> Format {
        let Some(accept) = accept else {
            return Format::Text;
        };
        let mut ranges: Vec<(f64, Option<Format>)> = accept
            .split(',')
            .take(32)
            .map(media_range)
            .filter(|(q, _)| *q > 0.0)
            .collect();
        // Stable: among equal q the header's order stands.
        ranges.sort_by(|a, b| b.0.total_cmp(&a.0));
        ranges
            .into_iter()
            .find_map(|(_, format)| format)
            .unwrap_or(Format::Text)
    }
}

/// One media range of an `Accept` header: its `q` and the format it names.
fn media_range(range: &str) -> (f64, Option<Format>) {
    let mut parts = range.split(';');
    let media_type = parts.next().unwrap_or("").trim();
    let (mut q, mut version, mut proto, mut encoding) = (1.0, None, None, None);
    for param in parts {
        let Some((key, value)) = param.split_once('=') else {
            continue;
        };
        let value = value.trim().trim_matches('"');
        match key.trim().to_ascii_lowercase().as_str() {
            "q" => {
                q = value
                    .parse::<f64>()
                    .ok()
                    .filter(|q| q.is_finite())
                    .unwrap_or(0.0)
            }
            "version" => version = Some(value),
            "proto" => proto = Some(value),
            "encoding" => encoding = Some(value),
            _ => {}
        }
    }
    let format = if media_type.eq_ignore_ascii_case("application/vnd.google.protobuf") {
        (proto == Some("io.prometheus.client.MetricFamily") && encoding == Some("delimited"))
            .then_some(Format::Protobuf)
    } else if media_type.eq_ignore_ascii_case("application/openmetrics-text") {
        matches!(version, None | Some("1.0.0" | "0.0.1")).then_some(Format::OpenMetrics)
    } else if media_type.eq_ignore_ascii_case("text/plain") {
        matches!(version, None | Some("0.0.4")).then_some(Format::Text)
    } else {
        None
    };
    (q, format)
}

/// Appends the Prometheus text format 0.0.4 form of an OpenMetrics
/// exposition `om` (as prometheus-client and [`super::text`] write it:
/// `# HELP` before `# TYPE`, no exemplars, lines ended by `\n` alone, no
/// blank line) to `out`.
pub fn openmetrics_to_text(om: &str, out: &mut String) {
    // A family's `# HELP` waits for its `# TYPE`, which says the name.
    let mut help: Option<(&str, &str)> = None;
    let mut rest = om;
    while !rest.is_empty() {
        if rest.starts_with("# ") {
            let (line, after) = rest.split_once('\n').unwrap_or((rest, ""));
            comment_to_text(line, &mut help, out);
            rest = after;
        } else {
            // Samples are the same bytes in both formats: each run of them,
            // up to the next comment line, is copied in one piece (line by
            // line, the copy was a tenth of a 10,000-tenant scrape).
            let end =
                memchr::memmem::find(rest.as_bytes(), b"\n# ").map_or(rest.len(), |at| at + 1);
            out.push_str(&rest[..end]);
            if !rest[..end].ends_with('\n') {
                out.push('\n');
            }
            rest = &rest[end..];
        }
    }
}

/// One comment line of OpenMetrics in the text format: `# HELP` kept for
/// its `# TYPE`, `# TYPE` renamed and retyped, `# UNIT` and `# EOF` left out.
fn comment_to_text<'a>(line: &'a str, help: &mut Option<(&'a str, &'a str)>, out: &mut String) {
    if let Some(rest) = line.strip_prefix("# HELP ") {
        *help = Some(rest.split_once(' ').unwrap_or((rest, "")));
    } else if let Some(rest) = line.strip_prefix("# TYPE ") {
        let (name, om_type) = rest.split_once(' ').unwrap_or((rest, "unknown"));
        let (suffix, text_type) = match om_type {
            "counter" => ("_total", "counter"),
            "info" => ("_info", "gauge"),
            "stateset" => ("", "gauge"),
            "gauge" | "histogram" | "summary" => ("", om_type),
            _ => ("", "untyped"),
        };
        if let Some((help_name, text)) = help.take()
            && help_name == name
        {
            for part in ["# HELP ", name, suffix, " ", text, "\n"] {
                out.push_str(part);
            }
        }
        for part in ["# TYPE ", name, suffix, " ", text_type, "\n"] {
            out.push_str(part);
        }
    }
    // `# UNIT`, `# EOF` and other comments: not in 0.0.4.
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_headers_of_real_scrapers_pick_their_format() {
        let cases = [
            (None, Format::Text),
            (Some("*/*"), Format::Text),
            (Some(""), Format::Text),
            (Some("text/plain"), Format::Text),
            // Prometheus 2.42 with native histograms enabled.
            (
                Some(
                    "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited;q=0.7,text/plain;version=0.0.4;q=0.3,*/*;q=0.2",
                ),
                Format::Protobuf,
            ),
            // Prometheus 2.x without.
            (
                Some(
                    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
                ),
                Format::OpenMetrics,
            ),
            // Prometheus 3 (escaping parameters, versions it may ask for).
            (
                Some(
                    "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.6,application/openmetrics-text;version=0.0.1;q=0.5,text/plain;version=1.0.0;escaping=allow-utf-8;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2",
                ),
                Format::OpenMetrics,
            ),
            // An old agent that knows 0.0.4 only, and one that ranks it first.
            (Some("text/plain; version=0.0.4"), Format::Text),
            (
                Some("application/openmetrics-text; q=0.5, text/plain; version=0.0.4"),
                Format::Text,
            ),
            // Refused, unknown versions and protobuf in another encoding.
            (Some("application/openmetrics-text; q=0"), Format::Text),
            (
                Some("application/openmetrics-text; version=2.0.0"),
                Format::Text,
            ),
            (
                Some(
                    "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=text, application/openmetrics-text",
                ),
                Format::OpenMetrics,
            ),
            (Some("application/json, text/html;q=0.9"), Format::Text),
            (Some("q=;;,,;=;"), Format::Text),
        ];
        for (accept, expected) in cases {
            assert_eq!(Format::negotiate(accept), expected, "{accept:?}");
        }
    }

    /// The conversion line by line, as it was before runs of samples were
    /// copied whole (df02408): the reference the property test holds it to.
    fn line_by_line(om: &str) -> String {
        let mut out = String::new();
        let mut help = None;
        for line in om.lines() {
            if line.starts_with("# ") || line.is_empty() {
                comment_to_text(line, &mut help, &mut out);
            } else {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }

    proptest::proptest! {
        #[test]
        fn runs_of_samples_convert_as_lines_do(
            lines in proptest::collection::vec(
                proptest::prop_oneof![
                    "# HELP [a-c]{1,3} [a-z #]{0,8}",
                    "# TYPE [a-c]{1,3} (counter|gauge|info|histogram|unknown)",
                    proptest::strategy::Just("# UNIT a bytes".to_owned()),
                    "[a-c]{1,3}(_total)?(\\{x=\"[a-z#]{0,4}\"\\})? [0-9]{1,3}",
                    proptest::strategy::Just("#not_a_comment 1".to_owned()),
                ],
                0..40,
            ),
            eof in proptest::bool::ANY,
            unterminated in proptest::bool::ANY,
        ) {
            let mut om = lines.join("\n");
            if !om.is_empty() && !unterminated {
                om.push('\n');
            }
            if eof && (om.is_empty() || om.ends_with('\n')) {
                om.push_str("# EOF\n");
            }
            let mut text = String::new();
            openmetrics_to_text(&om, &mut text);
            proptest::prop_assert_eq!(text, line_by_line(&om));
        }
    }

    #[test]
    fn the_text_format_names_counters_by_their_samples_and_has_no_eof() {
        let om = "# HELP a_requests Requests.\n# TYPE a_requests counter\na_requests_total{x=\"1\"} 3\n\
                  # HELP b Bytes.\n# TYPE b gauge\n# UNIT b bytes\nb 1.5\n\
                  # HELP h Latency.\n# TYPE h histogram\nh_sum 1.0\nh_count 2\nh_bucket{le=\"+Inf\"} 2\n\
                  # TYPE u unknown\nu 1\n# HELP i Build.\n# TYPE i info\ni_info{v=\"1\"} 1\n# EOF\n";
        let mut text = String::new();
        openmetrics_to_text(om, &mut text);
        assert_eq!(
            text,
            "# HELP a_requests_total Requests.\n# TYPE a_requests_total counter\na_requests_total{x=\"1\"} 3\n\
             # HELP b Bytes.\n# TYPE b gauge\nb 1.5\n\
             # HELP h Latency.\n# TYPE h histogram\nh_sum 1.0\nh_count 2\nh_bucket{le=\"+Inf\"} 2\n\
             # TYPE u untyped\nu 1\n# HELP i_info Build.\n# TYPE i_info gauge\ni_info{v=\"1\"} 1\n"
        );
    }
}
