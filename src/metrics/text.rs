//! A direct OpenMetrics text writer for the per-tenant families, which are
//! nearly all of a large exposition (tens of thousands of tenants): names and
//! label values are appended as they are, integers by `itoa`, floats by
//! `dtoa`, with none of `fmt`'s machinery per sample. The output is
//! byte-for-byte what prometheus-client writes for the same families (a
//! histogram bucket's `le` first, then the family's labels), as a test beside
//! the reference encoder (`events/reference.rs`) checks against
//! prometheus-client's own encoder; a `# HELP` text is escaped as
//! OpenMetrics asks, where prometheus-client writes it as it is (ours hold
//! nothing to escape).
//!
//! Kept because prometheus-client's encoder is too slow for the 50 ms
//! scrape target at 10,000 tenants: about four times the instructions for
//! these families (`cargo bench --bench scrape`, `docs/performance.md`).

/// Appends a family's `# HELP` and `# TYPE` lines.
pub fn header(out: &mut String, name: &str, help: &str, metric_type: &str) {
    out.push_str("# HELP ");
    out.push_str(name);
    out.push(' ');
    push_escaped(out, help, false);
    out.push_str("\n# TYPE ");
    out.push_str(name);
    out.push(' ');
    out.push_str(metric_type);
    out.push('\n');
}

/// Appends a label value escaped as the text format requires (`\\`, `\"`,
/// `\n`). Tenant ids cannot hold these (ingest refuses them), so the common
/// case is one scan and one copy.
pub fn push_label_value(out: &mut String, value: &str) {
    push_escaped(out, value, true);
}

fn push_escaped(out: &mut String, text: &str, quotes: bool) {
    // memchr's vectorised search: a scrape escapes a label value for each
    // of its million lines, and a byte-by-byte scan was a tenth of it.
    let needs_escape = if quotes {
        memchr::memchr3(b'\\', b'\n', b'"', text.as_bytes()).is_some()
    } else {
        memchr::memchr2(b'\\', b'\n', text.as_bytes()).is_some()
    };
    if !needs_escape {
        out.push_str(text);
        return;
    }
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '"' if quotes => out.push_str("\\\""),
            c => out.push(c),
        }
    }
}

/// Appends a whole number.
pub fn push_u64(out: &mut String, value: u64) {
    out.push_str(itoa::Buffer::new().format(value));
}

/// Appends a float as prometheus-client does (`1.0`, `0.25`, `+Inf`).
pub fn push_f64(out: &mut String, value: f64) {
    if value.is_nan() {
        out.push_str("NaN");
    } else if value.is_infinite() {
        out.push_str(if value > 0.0 { "+Inf" } else { "-Inf" });
    } else {
        out.push_str(dtoa::Buffer::new().format_finite(value));
    }
}

/// Appends a counter's value: whole when it is (most counts are, unless a
/// sample rate made them fractional), since integers format several times
/// faster than floats.
pub fn push_count(out: &mut String, value: f64) {
    match whole(value) {
        Some(whole) => push_u64(out, whole),
        None => push_f64(out, value),
    }
}

/// `value` as an integer when it is one that an `f64` holds exactly.
pub fn whole(value: f64) -> Option<u64> {
    (value.fract() == 0.0 && (0.0..9.0e15).contains(&value)).then_some(value as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_and_escapes() {
        let mut out = String::new();
        push_count(&mut out, 5.0);
        out.push(' ');
        push_count(&mut out, 0.5);
        out.push(' ');
        push_f64(&mut out, 1.0);
        out.push(' ');
        push_f64(&mut out, f64::INFINITY);
        out.push(' ');
        push_f64(&mut out, f64::NAN);
        out.push(' ');
        push_label_value(&mut out, "a\"b\\c\nd");
        assert_eq!(out, "5 0.5 1.0 +Inf NaN a\\\"b\\\\c\\nd");
    }

    #[test]
    fn header_lines() {
        let mut out = String::new();
        header(&mut out, "x", "Help with \\ and\nnewline.", "counter");
        assert_eq!(
            out,
            "# HELP x Help with \\\\ and\\nnewline.\n# TYPE x counter\n"
        );
    }
}
