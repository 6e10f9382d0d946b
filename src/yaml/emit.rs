//! Writing JSON values as block YAML that every reader takes back as the same value.
//!
//! The layout is libyaml's (what serde_yaml_ng wrote before): two-space indentation, sequences
//! inside a mapping at the key's column, multi-line strings as literal blocks. What differs is
//! when a string is quoted: a plain scalar is written only when no reader would take it for
//! anything but that string, under any of the schemas manifests meet:
//!
//! - YAML 1.1 as kubectl reads it (go-yaml v2, see [`super::kube`]): `yes`, `y`, `off`, `0400`,
//!   `1_000`, `+12`, `0x1F`, `1e3`, ...;
//! - YAML 1.1 as PyYAML reads it (its implicit resolvers, copied below): also `1:20`
//!   (sexagesimal), `=`, `<<` and timestamps such as `2024-01-01`;
//! - the YAML 1.2 core schema (serde_yaml_ng and other 1.2 tools): `0o17`, `.5`, ...
//!
//! Floats are written with a dot and a signed exponent (`1.0e+100`), which all three read as a
//! float (PyYAML's 1.1 float needs both).

use std::sync::LazyLock;

use regex::Regex;
use serde_json::{Map, Value};

/// Writes one value as a YAML document (no leading `---`), ending in a newline.
pub fn document(value: &Value) -> String {
    let mut out = String::new();
    node(&mut out, value, 0, false);
    out
}

/// Writes `value` as a node whose first line starts at `indent` (`inline`: that line's
/// indentation, or a `- `, is already written).
fn node(out: &mut String, value: &Value, indent: usize, inline: bool) {
    match value {
        Value::Object(map) if !map.is_empty() => mapping(out, map, indent, inline),
        Value::Array(items) if !items.is_empty() => sequence(out, items, indent, inline),
        scalar => {
            if !inline {
                pad(out, indent);
            }
            // A literal block under `- ` starts at the item's column, as libyaml writes it; a
            // document that is one literal block indents it by two.
            write_scalar(out, scalar, indent.max(2));
            out.push('\n');
        }
    }
}

fn mapping(out: &mut String, map: &Map<String, Value>, indent: usize, inline: bool) {
    for (i, (key, value)) in map.iter().enumerate() {
        if i > 0 || !inline {
            pad(out, indent);
        }
        if key.chars().count() > 1000 {
            // Beyond the length of an implicit key: an explicit `? key`.
            out.push_str("? ");
            double_quoted(out, key);
            out.push('\n');
            pad(out, indent);
            out.push(':');
        } else {
            write_key(out, key);
            out.push(':');
        }
        match value {
            Value::Object(m) if !m.is_empty() => {
                out.push('\n');
                mapping(out, m, indent + 2, false);
            }
            Value::Array(items) if !items.is_empty() => {
                out.push('\n');
                sequence(out, items, indent, false);
            }
            scalar => {
                out.push(' ');
                write_scalar(out, scalar, indent + 2);
                out.push('\n');
            }
        }
    }
}

fn sequence(out: &mut String, items: &[Value], indent: usize, inline: bool) {
    for (i, item) in items.iter().enumerate() {
        if i > 0 || !inline {
            pad(out, indent);
        }
        out.push_str("- ");
        node(out, item, indent + 2, true);
    }
}

fn pad(out: &mut String, indent: usize) {
    out.extend(std::iter::repeat_n(' ', indent));
}

fn write_key(out: &mut String, key: &str) {
    if plain_allowed(key) {
        out.push_str(key);
    } else if single_quote_allowed(key) {
        single_quoted(out, key);
    } else {
        double_quoted(out, key);
    }
}

/// A scalar; `block_indent` is the column of a literal block's lines.
fn write_scalar(out: &mut String, value: &Value, block_indent: usize) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => {
            if n.is_f64() {
                out.push_str(&float_text(&n.to_string()));
            } else {
                out.push_str(&n.to_string());
            }
        }
        Value::String(s) => {
            if plain_allowed(s) {
                out.push_str(s);
            } else if s.contains('\n') && literal_allowed(s) {
                literal(out, s, block_indent);
            } else if single_quote_allowed(s) {
                single_quoted(out, s);
            } else {
                double_quoted(out, s);
            }
        }
        // Empty collections (others are written as blocks).
        Value::Array(_) => out.push_str("[]"),
        Value::Object(_) => out.push_str("{}"),
    }
}

/// `1e100` -> `1.0e+100`, `5` (never from serde_json, but cheap) -> `5.0`.
fn float_text(text: &str) -> String {
    let (mantissa, exponent) = match text.split_once(['e', 'E']) {
        Some((m, e)) => (m, Some(e)),
        None => (text, None),
    };
    let mut out = mantissa.to_string();
    if !mantissa.contains('.') {
        out.push_str(".0");
    }
    if let Some(e) = exponent {
        out.push('e');
        if !e.starts_with(['+', '-']) {
            out.push('+');
        }
        out.push_str(e);
    }
    out
}

/// libyaml's printable set, less the tab (libyaml quotes a string holding one) and the
/// Unicode line and paragraph separators (line breaks to YAML 1.1 readers).
fn printable(c: char) -> bool {
    match c {
        '\n' => true,
        '\u{20}'..='\u{7e}' => true,
        '\u{2028}' | '\u{2029}' => false,
        '\u{a0}'..='\u{d7ff}' => true,
        '\u{e000}'..='\u{fffd}' => c != '\u{feff}',
        '\u{10000}'..='\u{10ffff}' => true,
        _ => false,
    }
}

/// Whether `s` can be written without quotes and read back as this string by every reader.
pub(crate) fn plain_allowed(s: &str) -> bool {
    let Some(first) = s.chars().next() else {
        return false;
    };
    let second = s[first.len_utf8()..].chars().next();
    let blank_after_first = matches!(second, None | Some(' '));
    !("#,[]{}&*!|>'\"%@`".contains(first)
        || "-?:".contains(first) && blank_after_first
        || s.starts_with("---")
        || s.starts_with("...")
        || s.starts_with(' ')
        || s.ends_with(' ')
        || s.ends_with(':')
        || s.contains(": ")
        || s.contains(" #")
        || s.contains('\n')
        || !s.chars().all(printable)
        || read_as_other_than_string(s))
}

fn single_quote_allowed(s: &str) -> bool {
    !s.contains('\n') && s.chars().all(printable)
}

fn literal_allowed(s: &str) -> bool {
    s.chars().all(printable)
        && !s.starts_with([' ', '\n'])
        && !s.contains(" \n")
        && !s.ends_with(' ')
}

fn single_quoted(out: &mut String, s: &str) {
    out.push('\'');
    out.push_str(&s.replace('\'', "''"));
    out.push('\'');
}

fn double_quoted(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            '\0' => out.push_str("\\0"),
            '\u{85}' => out.push_str("\\N"),
            '\u{2028}' => out.push_str("\\L"),
            '\u{2029}' => out.push_str("\\P"),
            c if printable(c) => out.push(c),
            c => out.push_str(&format!("\\u{:04x}", c as u32)),
        }
    }
    out.push('"');
}

fn literal(out: &mut String, s: &str, indent: usize) {
    let (indicator, body) = match s.strip_suffix('\n') {
        None => ("|-", s),
        Some(rest) if rest.ends_with('\n') => ("|+", rest),
        Some(rest) => ("|", rest),
    };
    out.push_str(indicator);
    out.push('\n');
    for (i, line) in body.split('\n').enumerate() {
        if i > 0 {
            out.push('\n');
        }
        if !line.is_empty() {
            pad(out, indent);
            out.push_str(line);
        }
    }
    // The newline that ends the last line is the caller's.
}

/// Whether some reader takes the plain scalar `s` as a boolean, number, null, timestamp or a
/// special key, rather than as the string `s`.
pub(crate) fn read_as_other_than_string(s: &str) -> bool {
    super::kube::resolve(s) != super::kube::Plain::Str || pyyaml(s) || core_1_2(s)
}

/// PyYAML 6's implicit resolvers (`resolver.py`, YAML 1.1), verbatim.
fn pyyaml(s: &str) -> bool {
    static PATTERNS: LazyLock<Vec<Regex>> = LazyLock::new(|| {
        [
            // bool
            r"^(?:yes|Yes|YES|no|No|NO|true|True|TRUE|false|False|FALSE|on|On|ON|off|Off|OFF)$",
            // float
            r"^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+][0-9]+)?|\.[0-9][0-9_]*(?:[eE][-+][0-9]+)?|[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+\.[0-9_]*|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$",
            // int
            r"^(?:[-+]?0b[0-1_]+|[-+]?0[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+|[-+]?[1-9][0-9_]*(?::[0-5]?[0-9])+)$",
            // merge
            r"^(?:<<)$",
            // null
            r"^(?:~|null|Null|NULL|)$",
            // timestamp
            r"^(?:[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]|[0-9][0-9][0-9][0-9]-[0-9][0-9]?-[0-9][0-9]?(?:[Tt]|[ \t]+)[0-9][0-9]?:[0-9][0-9]:[0-9][0-9](?:\.[0-9]*)?(?:[ \t]*(?:Z|[-+][0-9][0-9]?(?::[0-9][0-9])?))?)$",
            // value
            r"^(?:=)$",
        ]
        .iter()
        .filter_map(|p| Regex::new(p).ok())
        .collect()
    });
    PATTERNS.iter().any(|re| re.is_match(s))
}

/// The YAML 1.2 core schema (and serde_yaml_ng's reading of it, which adds `0b` integers).
fn core_1_2(s: &str) -> bool {
    static PATTERN: LazyLock<Option<Regex>> = LazyLock::new(|| {
        Regex::new(
            r"^(?:null|Null|NULL|~|true|True|TRUE|false|False|FALSE|[-+]?[0-9]+|[-+]?0o[0-7]+|[-+]?0x[0-9a-fA-F]+|[-+]?0b[01]+|[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$",
        )
        .ok()
    });
    PATTERN.as_ref().is_none_or(|re| re.is_match(s))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn quotes_what_any_reader_would_retype() {
        for s in [
            "yes",
            "No",
            "on",
            "OFF",
            "y",
            "N",
            "~",
            "null",
            "",
            "0400",
            "1_000",
            "+12",
            "0x1F",
            "0o17",
            "0b101",
            "1e3",
            "1:20",
            "190:20:30.15",
            "2024-01-01",
            "2001-12-14 21:59:43.10",
            "=",
            "<<",
            ".inf",
            "-.Inf",
            ".NaN",
            ".5",
            "5.",
            "08",
            "15001",
            "-1",
            "true",
        ] {
            assert!(!plain_allowed(s), "{s:?} must be quoted");
        }
        for s in [
            "hello",
            "1.28.0",
            "100m",
            "docker.io/istio/proxyv2:1.28.0",
            "--proxyLogLevel=warning",
            "-p",
            "$(POD_NAMESPACE).svc.cluster.local",
            "yesterday",
            "a=b",
            "0.5Gi",
            "1Gi",
            "x:y",
        ] {
            assert!(plain_allowed(s), "{s:?} may be plain");
        }
    }

    #[test]
    fn layout_is_libyamls() {
        let v = json!({"a": {"b": [1, {"c": "x", "d": []}, ["p", "q"]], "e": {}},
                       "s": "line1\nline2\n", "t": "it's", "u": "tab\there", "f": 1e100,
                       "l": ["a\nb"]});
        assert_eq!(
            document(&v),
            "a:\n  b:\n  - 1\n  - c: x\n    d: []\n  - - p\n    - q\n  e: {}\ns: |\n  line1\n  line2\nt: it's\nu: \"tab\\there\"\nf: 1.0e+100\nl:\n- |-\n  a\n  b\n"
        );
    }

    #[test]
    fn round_trips_through_both_readers() {
        let v = json!({
            "yes": "no", "0400": "0400", "k": ["1_000", "on", "=", "<<", "2024-01-01", " lead", "trail ",
            "a: b", "# c", "- d", "'q'", "\"dq\"", "multi\nline", "multi\n\nblank\n\n", "\u{85}nel", "ctl\u{7}",
            "\n", "x\n", "  indented\nsecond", "{\"json\":1}", "ünïcødé", "-", "?", ":", "---", "...x"],
            "nested": {"deep": {"deeper": [[], {}, null, true, 1.5, -0.0, 18446744073709551615u64]}},
        });
        let text = document(&v);
        assert_eq!(super::super::parse_one(&text).unwrap(), v, "\n{text}");
        let kube = super::super::parse_documents(&text).unwrap();
        assert_eq!(kube, vec![v], "\n{text}");
    }

    /// Strings built from the pieces that trip readers up: indicators, YAML 1.1 words and
    /// numbers, quotes, spaces, line breaks, controls and non-ASCII.
    fn tricky_string() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        let pieces = prop::sample::select(vec![
            "yes",
            "No",
            "on",
            "y",
            "~",
            "null",
            "0",
            "0400",
            "1_000",
            "+",
            "-",
            ".",
            "e3",
            "0x",
            "1:20",
            "2024-01-01",
            "=",
            "<<",
            ":",
            ": ",
            " #",
            "#",
            "- ",
            "? ",
            "'",
            "\"",
            "\\",
            " ",
            "\n",
            "\t",
            "\r",
            "\u{85}",
            "\u{7f}",
            "\u{2028}",
            "\u{feff}",
            "é",
            "a",
            "Z",
            "{",
            "}",
            "[",
            "]",
            ",",
            "&",
            "*",
            "!",
            "|",
            ">",
            "%",
            "@",
            "`",
            "---",
            "...",
            ".inf",
        ]);
        prop::collection::vec(pieces, 0..6).prop_map(|p| p.concat())
    }

    fn tricky_value() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            prop::sample::select(vec![0.5, -1.25, 1e-7, 2.5e-300, 123.456])
                .prop_map(|f| serde_json::json!(f)),
            tricky_string().prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
                prop::collection::vec((tricky_string(), inner), 0..5)
                    .prop_map(|entries| Value::Object(entries.into_iter().collect())),
            ]
        })
    }

    proptest::proptest! {
        #[test]
        fn whatever_is_written_reads_back_the_same(value in tricky_value()) {
            let text = document(&value);
            let read = super::super::parse_one(&text).map_err(|e| format!("{e}\n{text}"));
            proptest::prop_assert_eq!(read, Ok(value.clone()), "{}", text);
            let kube = super::super::parse_documents(&text).map_err(|e| format!("{e}\n{text}"));
            // A null document is an empty one to kubectl.
            let want: Vec<Value> = if value.is_null() { vec![] } else { vec![value.clone()] };
            proptest::prop_assert_eq!(kube, Ok(want), "{}", text);
        }
    }
}
