//! A fast reader for the block-style YAML that injection templates render.
//!
//! A general YAML parser spends most of an injection's CPU reading the rendered template back
//! (a few kilobytes of YAML per pod). Rendered templates use a small, regular subset: block
//! mappings and sequences, plain scalars, and JSON for everything an expression wrote (the
//! templates' auto-escape). This module reads exactly that subset and gives up, returning `None`,
//! on anything else (anchors, tags, block scalars, multi-line scalars, flow collections that are
//! not JSON, numbers that are not plain integers, ...), so the caller falls back to the full
//! parser. For what it does accept, it must agree with the full parser; the tests check this.

use serde_json::{Map, Value};

struct Line<'a> {
    indent: usize,
    /// The text after the indentation.
    text: &'a str,
}

/// Reads one document, or `None` when it is outside the subset.
pub(crate) fn parse(text: &str) -> Option<Value> {
    if has_special_characters(text) {
        return None;
    }
    let mut lines = Vec::new();
    for raw in text.split('\n') {
        let trimmed = raw.trim_start_matches(' ');
        if trimmed.is_empty() {
            continue;
        }
        if trimmed.starts_with('\t')
            || trimmed.starts_with('#')
            || raw.starts_with("---")
            || raw.starts_with("...")
        {
            return None;
        }
        lines.push(Line {
            indent: raw.len() - trimmed.len(),
            text: trimmed.trim_end_matches(' '),
        });
    }
    if lines.is_empty() {
        return Some(Value::Null);
    }
    let mut parser = Parser { lines, pos: 0 };
    let indent = parser.lines[0].indent;
    let value = parser.node(indent)?;
    (parser.pos == parser.lines.len()).then_some(value)
}

struct Parser<'a> {
    lines: Vec<Line<'a>>,
    pos: usize,
}

impl<'a> Parser<'a> {
    fn peek(&self) -> Option<&Line<'a>> {
        self.lines.get(self.pos)
    }

    /// A block node whose first line is at exactly `indent`.
    fn node(&mut self, indent: usize) -> Option<Value> {
        let line = self.peek()?;
        if line.indent != indent {
            return None;
        }
        if is_dash(line.text) {
            self.sequence(indent)
        } else {
            let first = line.text;
            self.pos += 1;
            self.mapping(indent, first)
        }
    }

    fn sequence(&mut self, indent: usize) -> Option<Value> {
        let mut items = Vec::new();
        while let Some(line) = self.peek() {
            if line.indent != indent || !is_dash(line.text) {
                break;
            }
            let text: &'a str = line.text;
            let rest = text[1..].trim_start_matches(' ');
            self.pos += 1;
            if rest.is_empty() {
                // The item is the block below, more indented.
                match self.peek() {
                    Some(next) if next.indent > indent => {
                        let i = next.indent;
                        items.push(self.node(i)?);
                    }
                    _ => items.push(Value::Null),
                }
                continue;
            }
            if is_dash(rest) {
                return None; // nested `- - x`: rare, left to the full parser
            }
            if split_key(rest).is_some() {
                // `- key: value`: the mapping's entries line up after the dash and spaces.
                let column = indent + (text.len() - rest.len());
                items.push(self.mapping(column, rest)?);
            } else {
                items.push(scalar(rest)?);
                if self.peek().is_some_and(|n| n.indent > indent) {
                    return None; // a multi-line scalar
                }
            }
        }
        Some(Value::Array(items))
    }

    /// A mapping at `indent` whose first entry is `first` (already consumed).
    fn mapping(&mut self, indent: usize, first: &'a str) -> Option<Value> {
        let mut map = Map::new();
        let mut entry = first;
        loop {
            let (key, rest) = split_key(entry)?;
            let value = if rest.is_empty() {
                match self.peek() {
                    Some(next) if next.indent > indent => {
                        let i = next.indent;
                        self.node(i)?
                    }
                    // `key:` followed by a sequence at the key's own indentation.
                    Some(next) if next.indent == indent && is_dash(next.text) => {
                        self.sequence(indent)?
                    }
                    _ => Value::Null,
                }
            } else {
                // `key: -` and `key: - x` are errors for the full parser (a sequence cannot
                // start after a key on the same line): leave them to it.
                if is_dash(rest) {
                    return None;
                }
                let v = scalar(rest)?;
                if self.peek().is_some_and(|n| n.indent > indent) {
                    return None; // a multi-line scalar, or a nested block after a value
                }
                v
            };
            if map.insert(key.to_string(), value).is_some() {
                return None; // a duplicate key: the full parser reports it
            }
            match self.peek() {
                Some(next) if next.indent == indent && !is_dash(next.text) => {
                    entry = next.text;
                    self.pos += 1;
                }
                Some(next) if next.indent > indent => return None,
                _ => break,
            }
        }
        Some(Value::Object(map))
    }
}

/// Characters the full parser rejects (controls other than tab and newline, U+FFFE, U+FFFF) or
/// reads as line breaks or byte-order marks (CR, NEL, U+2028, U+2029, U+FEFF), where this
/// reader would see ordinary text: such a document is left to the full parser.
fn has_special_characters(text: &str) -> bool {
    // A tab is also left to the full parser: where it may stand depends on what precedes it
    // (`- a\t` is an item, `- -\t` an error), and templates have no reason to write one.
    let control = |b: u8| (b < 0x20 && b != b'\n') || b == 0x7f;
    let special = |c: char| {
        ('\u{80}'..='\u{9f}').contains(&c)
            || matches!(
                c,
                '\u{2028}' | '\u{2029}' | '\u{feff}' | '\u{fffe}' | '\u{ffff}'
            )
    };
    text.bytes().any(control) || (!text.is_ascii() && text.chars().any(special))
}

fn is_dash(text: &str) -> bool {
    text == "-" || text.starts_with("- ")
}

/// `key: rest` or `key:` with a plain key; `None` when the text is not a mapping entry this
/// reader understands.
fn split_key(text: &str) -> Option<(&str, &str)> {
    let first = *text.as_bytes().first()?;
    if b"-?:,[]{}#&*!|>'\"%@`".contains(&first) {
        return None;
    }
    let (key, rest) = match find_colon_space(text) {
        Some(i) => (&text[..i], text[i + 2..].trim_start_matches(' ')),
        None => (text.strip_suffix(':')?, ""),
    };
    if key.is_empty() || key.ends_with(' ') || has_space_hash(key) || key.contains('\t') {
        return None;
    }
    // YAML limits a key without `? ` to 1,024 characters; the full parser reports longer ones.
    if key.len() > 1000 {
        return None;
    }
    Some((key, rest))
}

/// The byte index of the first `": "`, scanning bytes (a substring searcher costs more to set
/// up than these short lines take to scan).
fn find_colon_space(text: &str) -> Option<usize> {
    let b = text.as_bytes();
    (0..b.len().saturating_sub(1)).find(|&i| b[i] == b':' && b[i + 1] == b' ')
}

fn has_space_hash(text: &str) -> bool {
    text.as_bytes().windows(2).any(|w| w == b" #")
}

/// A scalar or JSON value on one line.
fn scalar(text: &str) -> Option<Value> {
    let first = text.chars().next()?;
    match first {
        '"' if text.len() >= 2
            && text.ends_with('"')
            && !text[1..text.len() - 1].contains(['"', '\\'])
            && !text.bytes().any(|b| b < 0x20) =>
        {
            // A JSON string without escapes: its text is the value.
            Some(Value::String(text[1..text.len() - 1].to_string()))
        }
        '"' | '{' | '[' => {
            // JSON joins an escaped surrogate pair into one character; YAML does not.
            if has_escaped_surrogate(text) {
                return None;
            }
            let mut de = serde_json::Deserializer::from_str(text);
            let value =
                serde::de::DeserializeSeed::deserialize(crate::value::Exact, &mut de).ok()?;
            de.end().ok()?;
            // Numbers that are not integers are left to the full parser: YAML and JSON read
            // some of them differently (`-0` is an integer in YAML, -0.0 in serde_json).
            (!has_float(&value)).then_some(value)
        }
        '\'' => single_quoted(text),
        _ => plain(text),
    }
}

fn has_escaped_surrogate(text: &str) -> bool {
    text.as_bytes().windows(4).any(|w| {
        w[0] == b'\\'
            && w[1] == b'u'
            && matches!(w[2], b'd' | b'D')
            && matches!(w[3], b'8'..=b'9' | b'a'..=b'f' | b'A'..=b'F')
    })
}

fn has_float(value: &Value) -> bool {
    match value {
        Value::Number(n) => n.is_f64(),
        Value::Array(items) => items.iter().any(has_float),
        Value::Object(map) => map.values().any(has_float),
        _ => false,
    }
}

fn single_quoted(text: &str) -> Option<Value> {
    let inner = text.strip_prefix('\'')?.strip_suffix('\'')?;
    // Every quote inside must be doubled.
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\'' && chars.next() != Some('\'') {
            return None;
        }
        out.push(c);
    }
    Some(Value::String(out))
}

fn plain(text: &str) -> Option<Value> {
    if "&*!|>%@`?,]}#".contains(text.chars().next()?)
        || has_space_hash(text)
        || find_colon_space(text).is_some()
        || text.ends_with(':')
    {
        return None;
    }
    match text {
        "null" | "Null" | "NULL" | "~" => return Some(Value::Null),
        "true" | "True" | "TRUE" => return Some(Value::Bool(true)),
        "false" | "False" | "FALSE" => return Some(Value::Bool(false)),
        _ => {}
    }
    let digits = text.strip_prefix(['-', '+']).unwrap_or(text);
    let looks_numeric = digits.starts_with(|c: char| c.is_ascii_digit() || c == '.');
    if looks_numeric {
        // Plain decimal integers only; floats, octal, hex and the like go to the full parser.
        if !digits.bytes().all(|b| b.is_ascii_digit())
            || (digits.len() > 1 && digits.starts_with('0'))
        {
            return None;
        }
        if let Ok(n) = text.parse::<i64>() {
            return Some(Value::from(n));
        }
        return text.parse::<u64>().ok().map(Value::from);
    }
    // Words the YAML core schema reads as something other than a string.
    if matches!(text, ".inf" | ".Inf" | ".INF" | ".nan" | ".NaN" | ".NAN") {
        return None;
    }
    Some(Value::String(text.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full(text: &str) -> Value {
        serde_yaml_ng::from_str(text).expect("valid YAML")
    }

    fn agrees(text: &str) {
        let fast = parse(text).unwrap_or_else(|| panic!("fast reader gave up on:\n{text}"));
        assert_eq!(fast, full(text), "\n{text}");
    }

    #[test]
    fn reads_what_templates_render() {
        agrees(
            "metadata:\n  labels:\n    a: \"b\"\n  annotations:\n    x: \"{\\\"k\\\":1}\"\nspec:\n  initContainers:\n  - name: \"istio-init\"\n    args:\n    - istio-iptables\n    - \"-p\"\n    - \"15001\"\n    resources: {\"limits\":{\"cpu\":\"2\"}}\n    securityContext:\n      runAsUser: 0\n      privileged: false\n  containers:\n  - name: istio-proxy\n    ports:\n    - containerPort: 15090\n      protocol: TCP\n    env:\n    - name: A\n      valueFrom:\n        fieldRef:\n          fieldPath: metadata.name\n    - name: B\n      value: \"x\\ny\"\n  volumes:\n  - name: w\n    emptyDir: null\n  - name: d\n    emptyDir: {}\n  - name: e\n    emptyDir:\n      medium: Memory\n  initContainers2: []\n",
        );
    }

    #[test]
    fn scalars_type_as_the_full_parser_types_them() {
        for v in [
            "a: 1",
            "a: -7",
            "a: true",
            "a: False",
            "a: ~",
            "a: null",
            "a:",
            "a: hello world",
            "a: $(POD_NAMESPACE).svc.cluster.local",
            "a: --proxyLogLevel=warning",
            "a: '*'",
            "a: 'it''s'",
            "a: \"\"",
            "a: /healthz/ready",
            "a: 18446744073709551615",
        ] {
            agrees(v);
        }
    }

    #[test]
    fn gives_up_outside_the_subset() {
        for v in [
            "a: &x 1",
            "a: *x",
            "a: !!str 1",
            "a: |\n  text",
            "a: >\n  text",
            "a: 1.5",
            "a: 0x10",
            "a: 012",
            "a: .inf",
            "a: {b: c}",
            "a: [b, c]",
            "a: b # comment",
            "a: multi\n  line",
            "---\na: 1",
            "a: 1\na: 2",
            "? a\n: b",
            "- - x",
        ] {
            assert!(parse(v).is_none(), "should give up on {v:?}");
        }
    }

    #[test]
    fn sequences_of_mappings_and_nested_sequences() {
        agrees("- a: 1\n  b:\n  - x\n  - y\n- c: 2\n-\n  d: 3\n- plain\n");
        agrees("top:\n- a\n- b\nnext: 1\n");
    }
}
