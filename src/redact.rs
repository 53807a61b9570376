//! Query text with its literal values taken out, as `pg_stat_statements`
//! normalises it: every string literal (`'…'` with `''` inside, `E'…'` with
//! backslash escapes, `B'…'`, `X'…'`, `N'…'`, `U&'…'`, dollar-quoted
//! `$$…$$` and `$tag$…$tag$`) and every numeric literal (`42`, `-` kept
//! apart, `3.5`, `.5`, `1e-3`, `0x1F`, `1_000`) becomes `$1`, `$2`, … in
//! order, numbered after the highest parameter the text already has (so a
//! normalised text keeps its `$n` and a second pass changes nothing).
//! Keywords, identifiers (quoted or not), operators, parameters and
//! comments stay as written: a sqlcommenter comment such as
//! `/*tenant='clinic7'*/` names the tenant, not a value of its data.
//!
//! A `$n` that would be glued to a name or a lone `$` before it (`ab'x'`,
//! `$c'x'`) gets a space in front, so that it cannot read as part of a name
//! or open a dollar quote.
//!
//! A text cut short (a prefix of `pg_stat_activity.query`) is fine: a
//! literal or comment left open runs to the end, so the rest of an open
//! string is replaced, never shown.
//!
//! A leaf module: pure functions over `&str`, nothing of the crate.

use std::fmt::Write as _;

/// How a query's text is shown (in guard records, their log lines and the
/// API): `guard.query_text`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QueryText {
    /// Literals replaced by `$n` ([`normalise`]); the default.
    #[default]
    Redacted,
    /// As the server shows it, values included.
    Full,
    /// Not at all (an empty string).
    None,
}

impl QueryText {
    pub fn as_str(self) -> &'static str {
        match self {
            QueryText::Redacted => "redacted",
            QueryText::Full => "full",
            QueryText::None => "none",
        }
    }

    /// `query` as this choice shows it.
    pub fn show(self, query: &str) -> String {
        match self {
            QueryText::Redacted => normalise(query),
            QueryText::Full => query.to_owned(),
            QueryText::None => String::new(),
        }
    }
}

/// `query` with every literal replaced by `$n` (see the module's doc).
/// Never panics, whatever the text; idempotent.
pub fn normalise(query: &str) -> String {
    let first = tokens(query)
        .filter_map(|t| match t.kind {
            Kind::Parameter(n) => Some(n),
            Kind::Literal | Kind::Other => None,
        })
        .max()
        .unwrap_or(0);
    let mut next = first.saturating_add(1);
    let mut out = String::with_capacity(query.len());
    for token in tokens(query) {
        match token.kind {
            Kind::Literal => {
                // Glued to what comes before, `$n` could read as part of it:
                // `$$1` or `$c$1` as a dollar quote, `ab$1` as one name.
                if out.ends_with(|c: char| {
                    c == '$' || c == '_' || c.is_ascii_alphanumeric() || !c.is_ascii()
                }) {
                    out.push(' ');
                }
                let _ = write!(out, "${next}");
                next = next.saturating_add(1);
            }
            Kind::Parameter(_) | Kind::Other => out.push_str(&query[token.start..token.end]),
        }
    }
    out
}

/// What a piece of text is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A string or numeric literal: replaced.
    Literal,
    /// `$n`: kept, and numbering continues after the highest.
    Parameter(u64),
    /// Anything else: kept as written.
    Other,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Token {
    kind: Kind,
    start: usize,
    end: usize,
}

/// The text cut into tokens, every byte in exactly one. Every boundary is
/// at an ASCII byte or the end, so each token is a `&str` slice: a byte of
/// a multi-byte character is always part of an identifier, a literal or a
/// comment.
fn tokens(query: &str) -> impl Iterator<Item = Token> + '_ {
    let bytes = query.as_bytes();
    let mut at = 0;
    std::iter::from_fn(move || {
        if at >= bytes.len() {
            return None;
        }
        let start = at;
        let (kind, end) = token_at(bytes, start);
        // Always forward, whatever a scanner returned.
        at = end.max(start + 1).min(bytes.len());
        Some(Token {
            kind,
            start,
            end: at,
        })
    })
}

/// A byte of an identifier (PostgreSQL counts every non-ASCII byte as one).
fn is_ident_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_' || b >= 0x80
}

fn is_ident_continue(b: u8) -> bool {
    is_ident_start(b) || b.is_ascii_digit() || b == b'$'
}

/// The token starting at `i` and where it ends.
fn token_at(b: &[u8], i: usize) -> (Kind, usize) {
    let at = |k: usize| b.get(k).copied();
    match b[i] {
        b'-' if at(i + 1) == Some(b'-') => {
            let end = b[i..]
                .iter()
                .position(|&c| c == b'\n')
                .map_or(b.len(), |p| i + p);
            (Kind::Other, end)
        }
        b'/' if at(i + 1) == Some(b'*') => (Kind::Other, block_comment_end(b, i)),
        b'\'' => (Kind::Literal, quoted_end(b, i, b'\'', false)),
        b'"' => (Kind::Other, quoted_end(b, i, b'"', false)),
        b'$' => dollar(b, i),
        c if c.is_ascii_digit() => (Kind::Literal, number_end(b, i)),
        b'.' if at(i + 1).is_some_and(|c| c.is_ascii_digit()) => (Kind::Literal, number_end(b, i)),
        c if is_ident_start(c) => match (c.to_ascii_lowercase(), at(i + 1), at(i + 2)) {
            (b'e', Some(b'\''), _) => (Kind::Literal, quoted_end(b, i + 1, b'\'', true)),
            (b'b' | b'x' | b'n', Some(b'\''), _) => {
                (Kind::Literal, quoted_end(b, i + 1, b'\'', false))
            }
            (b'u', Some(b'&'), Some(b'\'')) => (Kind::Literal, quoted_end(b, i + 2, b'\'', false)),
            _ => {
                let end = b[i..]
                    .iter()
                    .position(|&c| !is_ident_continue(c))
                    .map_or(b.len(), |p| i + p);
                (Kind::Other, end)
            }
        },
        _ => (Kind::Other, i + 1),
    }
}

/// The end of a quoted token opening at `open` (`quote` doubled inside
/// stands for itself; with `backslash`, `\` escapes the next byte). An
/// unclosed one runs to the end.
fn quoted_end(b: &[u8], open: usize, quote: u8, backslash: bool) -> usize {
    let mut k = open + 1;
    while k < b.len() {
        let c = b[k];
        if backslash && c == b'\\' {
            k += 2;
        } else if c == quote {
            if b.get(k + 1) == Some(&quote) {
                k += 2;
            } else {
                return k + 1;
            }
        } else {
            k += 1;
        }
    }
    b.len()
}

/// The end of a `/* … */` comment opening at `open`; they nest.
fn block_comment_end(b: &[u8], open: usize) -> usize {
    let mut depth = 0usize;
    let mut k = open;
    while k + 1 < b.len() {
        match (b[k], b[k + 1]) {
            (b'/', b'*') => {
                depth += 1;
                k += 2;
            }
            (b'*', b'/') => {
                depth -= 1;
                k += 2;
                if depth == 0 {
                    return k;
                }
            }
            _ => k += 1,
        }
    }
    b.len()
}

/// At a `$` that starts a token: a parameter `$n`, a dollar-quoted string
/// (`$$…$$`, `$tag$…$tag$`), or a lone `$`.
fn dollar(b: &[u8], i: usize) -> (Kind, usize) {
    let digits = b[i + 1..].iter().take_while(|c| c.is_ascii_digit()).count();
    if digits > 0 {
        let end = i + 1 + digits;
        let n = b[i + 1..end].iter().fold(0u64, |n, d| {
            n.saturating_mul(10).saturating_add(u64::from(d - b'0'))
        });
        return (Kind::Parameter(n), end);
    }
    // A tag: an identifier without `$`, then `$`.
    let tag_len = match b.get(i + 1) {
        Some(&c) if is_ident_start(c) => {
            1 + b[i + 2..]
                .iter()
                .take_while(|&&c| is_ident_continue(c) && c != b'$')
                .count()
        }
        _ => 0,
    };
    if b.get(i + 1 + tag_len) != Some(&b'$') {
        return (Kind::Other, i + 1);
    }
    let delimiter = &b[i..i + tag_len + 2];
    let body = i + delimiter.len();
    let end = b[body..]
        .windows(delimiter.len())
        .position(|w| w == delimiter)
        .map_or(b.len(), |p| body + p + delimiter.len());
    (Kind::Literal, end)
}

/// The end of a number starting at `i`: digits (and `_`), a fraction, an
/// exponent, and whatever identifier bytes stick to it (`0x1F`, `1abc`),
/// which PostgreSQL reads as part of the number or refuses.
fn number_end(b: &[u8], i: usize) -> usize {
    let digits = |k: usize| {
        k + b[k..]
            .iter()
            .take_while(|c| c.is_ascii_digit() || **c == b'_')
            .count()
    };
    let mut k = digits(i);
    if b.get(k) == Some(&b'.') {
        k = digits(k + 1);
    }
    if matches!(b.get(k), Some(b'e' | b'E')) {
        let sign = usize::from(matches!(b.get(k + 1), Some(b'+' | b'-')));
        if b.get(k + 1 + sign).is_some_and(u8::is_ascii_digit) {
            k = digits(k + 1 + sign);
        }
    }
    k + b[k..]
        .iter()
        .take_while(|&&c| is_ident_start(c) || c.is_ascii_digit())
        .count()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn literals_become_numbered_parameters() {
        for (query, expected) in [
            (
                "SELECT * FROM t WHERE a = 'x' AND b = 42",
                "SELECT * FROM t WHERE a = $1 AND b = $2",
            ),
            (
                "SELECT 'it''s', E'a\\'b', 3.5e-2, .5",
                "SELECT $1, $2, $3, $4",
            ),
            (
                "SELECT $$secret$$, $fn$ body 'x' $$ $fn$ FROM t1",
                "SELECT $1, $2 FROM t1",
            ),
            (
                "UPDATE t SET x = -1, y = 0x1F, z = 1_000 WHERE id = $1",
                "UPDATE t SET x = -$2, y = $3, z = $4 WHERE id = $1",
            ),
            (
                "SELECT B'101', X'FF', N'n', U&'d\\0061t', '2024-01-01'::date",
                "SELECT $1, $2, $3, $4, $5::date",
            ),
            (
                "ALTER ROLE app PASSWORD 'hunter2'",
                "ALTER ROLE app PASSWORD $1",
            ),
        ] {
            assert_eq!(normalise(query), expected, "{query}");
        }
    }

    #[test]
    fn identifiers_keywords_comments_and_parameters_stay() {
        for query in [
            "/*tenant='clinic7',route='%2Fp'*/ SELECT col_1, t2.x3 FROM \"it's 42\" WHERE a = $1",
            "SELECT a$1, résumé9 FROM s.t -- note 'x'\nWHERE b = $2",
            "SELECT /* a /* nested 'x' */ still 5 */ c",
        ] {
            assert_eq!(normalise(query), query);
        }
    }

    #[test]
    fn a_text_cut_inside_a_literal_hides_the_rest() {
        assert_eq!(
            normalise("SELECT * FROM t WHERE email = 'someone@exam"),
            "SELECT * FROM t WHERE email = $1"
        );
        assert_eq!(normalise("SELECT $x$ open"), "SELECT $1");
        assert_eq!(normalise("SELECT E'a\\"), "SELECT $1");
        assert_eq!(normalise("SELECT 1 /* open 'x"), "SELECT $1 /* open 'x");
        // Glued on, `$n` would read as part of a name or a dollar quote.
        assert_eq!(normalise("SELECT $'x'"), "SELECT $ $1");
        assert_eq!(normalise("SELECT $c'x'"), "SELECT $c $1");
        assert_eq!(normalise("SELECT int4'5'"), "SELECT int4 $1");
    }

    #[test]
    fn the_choice_shows_redacted_full_or_nothing() {
        let query = "SELECT 'x'";
        assert_eq!(QueryText::default(), QueryText::Redacted);
        assert_eq!(QueryText::Redacted.show(query), "SELECT $1");
        assert_eq!(QueryText::Full.show(query), query);
        assert_eq!(QueryText::None.show(query), "");
    }

    /// A piece of a generated query; every literal holds `ZQ` (or a number
    /// `7…`), which must not survive. Literals start with a space, as
    /// between SQL tokens: `a$$x$$` is one identifier to PostgreSQL too.
    fn piece() -> impl Strategy<Value = String> {
        let secret = "[a-z]{0,3}";
        prop_oneof![
            Just("SELECT".to_owned()),
            Just(" WHERE ".to_owned()),
            Just("t1.col_2".to_owned()),
            Just("=".to_owned()),
            Just("- ".to_owned()),
            Just("$ ".to_owned()),
            Just("::int".to_owned()),
            Just("$1".to_owned()),
            Just("\"quoted id\"".to_owned()),
            Just("/*tenant='clinic7'*/".to_owned()),
            Just("-- comment\n".to_owned()),
            Just(" ".to_owned()),
            secret.prop_map(|s| format!(" 'ZQ{s}'")),
            secret.prop_map(|s| format!(" 'ZQ''{s}'")),
            secret.prop_map(|s| format!(" E'ZQ\\'{s}'")),
            secret.prop_map(|s| format!(" $$ZQ{s}$$")),
            secret.prop_map(|s| format!(" $tag$ZQ' {s}$tag$")),
            (0u32..100_000).prop_map(|n| format!(" 7{n}")),
            (0u32..1000, 0u32..1000).prop_map(|(a, b)| format!(" 7{a}.{b}e-7")),
        ]
    }

    proptest! {
        #[test]
        fn never_panics_and_is_idempotent(query in any::<String>()) {
            let once = normalise(&query);
            prop_assert_eq!(normalise(&once), once.clone());
            prop_assert!(tokens(&once).all(|t| t.kind != Kind::Literal));
            for choice in [QueryText::Redacted, QueryText::Full, QueryText::None] {
                let _ = choice.show(&query);
            }
        }

        #[test]
        fn sql_like_noise_never_panics(query in "[ -~\\n'\"$/*\\\\eE.0-9\u{e9}]{0,80}") {
            let once = normalise(&query);
            prop_assert_eq!(normalise(&once), once);
        }

        #[test]
        fn no_literal_of_the_input_survives(pieces in prop::collection::vec(piece(), 0..24)) {
            let query = pieces.concat();
            let redacted = normalise(&query);
            prop_assert!(!redacted.contains("ZQ"), "{} -> {}", query, redacted);
            prop_assert!(!redacted.contains(" 7"), "{} -> {}", query, redacted);
            let tags = pieces.iter().filter(|p| p.starts_with("/*tenant")).count();
            prop_assert_eq!(redacted.matches("/*tenant='clinic7'*/").count(), tags);
            prop_assert_eq!(normalise(&redacted), redacted);
        }
    }
}
