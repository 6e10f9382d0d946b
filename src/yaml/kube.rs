//! Reading manifests the way `kubectl` reads them.
//!
//! kubectl reads YAML with sigs.k8s.io/yaml: `YAMLToJSON` decodes the text with go-yaml v2
//! (`gopkg.in/yaml.v2`, vendored as `sigs.k8s.io/yaml/goyaml.v2`) into `interface{}` values and
//! marshals them with `encoding/json`. go-yaml v2 follows YAML 1.1 for plain (unquoted)
//! scalars, so `yes`, `off`, `y` are booleans, `0400` is the integer 256 and `1_000` is 1000,
//! where a YAML 1.2 reader (serde_yaml_ng) sees strings. Sources of truth, checked against the
//! kubectl 1.32 binary (`kubectl annotate --local -o json`, which reads a file without a
//! cluster; `tests/golden/yaml/tricky-scalars.kubectl.json` is its output):
//!
//! - go-yaml v2 `resolve.go`: the words `y Y yes Yes YES true True TRUE on On ON` (true),
//!   `n N no No NO false False FALSE off Off OFF` (false), `~ null Null NULL` and the empty
//!   scalar (null), `.inf .Inf .INF +.inf ... -.inf ...`, `.nan .NaN .NAN`; then, for a scalar
//!   that starts with a digit or a sign, Go's `strconv.ParseInt(s, 0, 64)` on the text with every
//!   `_` removed (`0x`/`0X` hex, `0o`/`0O` and a leading `0` octal, `0b`/`0B` binary, a `+` or `-`
//!   sign), then `ParseUint`, then a float if the text matches
//!   `^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$`; a scalar that starts with `.`
//!   is a float when Go's `ParseFloat` reads it. Sexagesimal `1:20` stays a string (YAML 1.1 has
//!   it, go-yaml v2 leaves it out on purpose). Timestamps are recognised but, decoded into
//!   `interface{}`, kept as the original string (go-yaml v2 `decode.go`, for backward
//!   compatibility), so they are strings here.
//! - go-yaml v2 `decode.go`: a repeated key replaces the earlier value; a plain `<<` key merges
//!   a mapping or a list of mappings in place (see [`merge`] for v2's order, which is not v3's).
//! - sigs.k8s.io/yaml `yaml.go` (`convertToJSONableObject`): keys become strings (`true`,
//!   `false`, decimal integers, floats formatted with Go's `FormatFloat(f, 'g', -1, 32)`); a
//!   null or sequence key is an error. `encoding/json` then refuses NaN and infinities and
//!   writes a float with no fractional part below 1e21 as an integer (`1e3` is sent as `1000`).
//!
//! Where PyYAML (the YAML 1.1 reader the tests use) differs from go-yaml v2 (`y`/`n` are
//! strings to PyYAML, `1:20` is 80, `=` and `<<` are special), this reader follows kubectl; the
//! writer quotes for both.

use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, Error as _, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

/// What go-yaml v2 makes of a plain scalar.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Plain {
    Null,
    Bool(bool),
    Int(i64),
    Uint(u64),
    Float(f64),
    Str,
    /// A `<<` merge key.
    Merge,
}

/// go-yaml v2's `resolve` for an untagged plain scalar.
pub(crate) fn resolve(text: &str) -> Plain {
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return Plain::Null,
        "y" | "Y" | "yes" | "Yes" | "YES" | "true" | "True" | "TRUE" | "on" | "On" | "ON" => {
            return Plain::Bool(true);
        }
        "n" | "N" | "no" | "No" | "NO" | "false" | "False" | "FALSE" | "off" | "Off" | "OFF" => {
            return Plain::Bool(false);
        }
        ".nan" | ".NaN" | ".NAN" => return Plain::Float(f64::NAN),
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => {
            return Plain::Float(f64::INFINITY);
        }
        "-.inf" | "-.Inf" | "-.INF" => return Plain::Float(f64::NEG_INFINITY),
        "<<" => return Plain::Merge,
        _ => {}
    }
    let first = text.as_bytes()[0];
    match first {
        b'.' => {
            // Go's ParseFloat on text that starts with a dot: `.5`, `.5e3`.
            if is_yaml_style_float(text) {
                return text.parse().map_or(Plain::Str, Plain::Float);
            }
            Plain::Str
        }
        b'0'..=b'9' | b'+' | b'-' => {
            let plain: String = text.chars().filter(|&c| c != '_').collect();
            if let Some(n) = go_parse_int(&plain) {
                return Plain::Int(n);
            }
            if let Some(n) = go_parse_uint(&plain) {
                return Plain::Uint(n);
            }
            if is_yaml_style_float(&plain) {
                return match plain.parse::<f64>() {
                    // Go's ParseFloat fails on overflow (ErrRange); so does this branch.
                    Ok(f) if f.is_finite() => Plain::Float(f),
                    _ => Plain::Str,
                };
            }
            // go-yaml's own binary forms, after Go's: `0b` followed by what ParseInt(_, 2)
            // reads, which includes a sign (`0b-1` is -1).
            if let Some(rest) = plain.strip_prefix("0b") {
                return parse_radix_signed(rest, 2).map_or(Plain::Str, Plain::Int);
            }
            if let Some(rest) = plain.strip_prefix("-0b") {
                return parse_radix_signed(&format!("-{rest}"), 2).map_or(Plain::Str, Plain::Int);
            }
            Plain::Str
        }
        _ => Plain::Str,
    }
}

/// `^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$`
fn is_yaml_style_float(text: &str) -> bool {
    let b = text.as_bytes();
    let mut i = 0;
    if matches!(b.first(), Some(b'+' | b'-')) {
        i += 1;
    }
    let digits = |i: &mut usize| {
        let start = *i;
        while *i < b.len() && b[*i].is_ascii_digit() {
            *i += 1;
        }
        *i - start
    };
    if b.get(i) == Some(&b'.') {
        i += 1;
        if digits(&mut i) == 0 {
            return false;
        }
    } else {
        if digits(&mut i) == 0 {
            return false;
        }
        if b.get(i) == Some(&b'.') {
            i += 1;
            digits(&mut i);
        }
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        if digits(&mut i) == 0 {
            return false;
        }
    }
    i == b.len()
}

/// Go's `strconv.ParseInt(s, 0, 64)` (underscores already removed).
fn go_parse_int(s: &str) -> Option<i64> {
    let (negative, rest) = match s.as_bytes().first()? {
        b'+' => (false, &s[1..]),
        b'-' => (true, &s[1..]),
        _ => (false, s),
    };
    let magnitude = go_parse_uint(rest)?;
    if negative {
        if magnitude <= i64::MAX as u64 + 1 {
            Some((magnitude as i128).wrapping_neg() as i64)
        } else {
            None
        }
    } else {
        i64::try_from(magnitude).ok()
    }
}

/// Go's `strconv.ParseUint(s, 0, 64)`: no sign; `0x`, `0o`, `0b` (either case) or a leading `0`
/// for octal.
fn go_parse_uint(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    let (radix, digits) = if b.len() >= 2 && b[0] == b'0' {
        match b[1] {
            b'x' | b'X' => (16, &s[2..]),
            b'o' | b'O' => (8, &s[2..]),
            b'b' | b'B' => (2, &s[2..]),
            _ => (8, &s[1..]),
        }
    } else {
        (10, s)
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    u64::from_str_radix(digits, radix).ok()
}

/// Go's `strconv.ParseInt(s, 2, 64)`, sign allowed.
fn parse_radix_signed(s: &str, radix: u32) -> Option<i64> {
    let digits = s.strip_prefix(['+', '-']).unwrap_or(s);
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    i64::from_str_radix(s.strip_prefix('+').unwrap_or(s), radix).ok()
}

/// A resolved plain scalar as the JSON value kubectl sends.
fn plain_value(text: &str) -> Result<Value, String> {
    Ok(match resolve(text) {
        Plain::Null => Value::Null,
        Plain::Bool(b) => Value::Bool(b),
        Plain::Int(n) => Value::from(n),
        Plain::Uint(n) => Value::from(n),
        Plain::Float(f) => float_value(f)?,
        Plain::Str | Plain::Merge => Value::String(text.to_owned()),
    })
}

/// A float as `encoding/json` writes it: NaN and infinities refused, a whole number below 1e21
/// written as an integer.
fn float_value(f: f64) -> Result<Value, String> {
    if !f.is_finite() {
        return Err(format!(
            "{f} is not a number JSON can hold (kubectl refuses it too); quote it to make it a string"
        ));
    }
    // `-0` stays a float: Go writes it as `-0`, which is not the integer 0's text.
    let negative_zero = f == 0.0 && f.is_sign_negative();
    if f.fract() == 0.0 && !negative_zero {
        if f >= -(2f64.powi(63)) && f < 2f64.powi(63) {
            return Ok(Value::from(f as i64));
        }
        if f >= 0.0 && f < 2f64.powi(64) {
            return Ok(Value::from(f as u64));
        }
    }
    Ok(Number::from_f64(f).map_or(Value::Null, Value::Number))
}

/// sigs.k8s.io/yaml's string for a float key: Go's `FormatFloat(f, 'g', -1, 32)`.
fn float_key(f: f64) -> String {
    if f.is_nan() {
        return ".nan".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { ".inf" } else { "-.inf" }.into();
    }
    let single = f as f32;
    // Rust's `{:e}` gives the shortest digits that read back as the same f32, as Go's -1
    // precision does: `d.ddde<exp>`.
    let sci = format!("{:e}", single.abs());
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let sign = if single.is_sign_negative() { "-" } else { "" };
    if !(-4..6).contains(&exp) {
        let mut out = format!("{sign}{}", &digits[..1]);
        if digits.len() > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        out.push_str(&format!(
            "e{}{:02}",
            if exp < 0 { '-' } else { '+' },
            exp.abs()
        ));
        out
    } else if exp < 0 {
        format!(
            "{sign}0.{}{digits}",
            "0".repeat(usize::try_from(-exp - 1).unwrap_or(0))
        )
    } else {
        let point = usize::try_from(exp + 1).unwrap_or(0);
        if digits.len() <= point {
            format!("{sign}{digits}{}", "0".repeat(point - digits.len()))
        } else {
            format!("{sign}{}.{}", &digits[..point], &digits[point..])
        }
    }
}

/// Reads one document of `source` (the whole text the deserializer reads, so that a scalar's
/// position tells whether it was quoted) into the JSON kubectl would send.
#[derive(Clone, Copy)]
pub(crate) struct Kube<'s> {
    pub source: &'s str,
}

impl<'s> Kube<'s> {
    /// Whether `v`, borrowed from the source, was written without quotes.
    fn is_plain(&self, v: &str) -> bool {
        let base = self.source.as_ptr() as usize;
        let at = v.as_ptr() as usize;
        if at < base || at + v.len() > base + self.source.len() {
            return false;
        }
        let start = at - base;
        let end = start + v.len();
        let bytes = self.source.as_bytes();
        let quoted = matches!(
            (start.checked_sub(1).map(|i| bytes[i]), bytes.get(end)),
            (Some(open @ (b'\'' | b'"')), Some(close)) if open == *close
        );
        !quoted
    }
}

impl<'de, 's> DeserializeSeed<'de> for Kube<'s> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(KubeVisitor(self))
    }
}

struct KubeVisitor<'s>(Kube<'s>);

impl<'de, 's> Visitor<'de> for KubeVisitor<'s> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    // Integers beyond 64 bits: go-yaml falls through to a float.
    fn visit_i128<E: serde::de::Error>(self, v: i128) -> Result<Value, E> {
        float_value(v as f64).map_err(E::custom)
    }

    fn visit_u128<E: serde::de::Error>(self, v: u128) -> Result<Value, E> {
        float_value(v as f64).map_err(E::custom)
    }

    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Value, E> {
        float_value(v).map_err(E::custom)
    }

    fn visit_borrowed_str<E: serde::de::Error>(self, v: &'de str) -> Result<Value, E> {
        if self.0.is_plain(v) {
            plain_value(v).map_err(E::custom)
        } else {
            Ok(Value::String(v.to_owned()))
        }
    }

    // Not borrowed from the source: a quoted scalar with escapes, a block scalar, or a plain
    // scalar folded over lines (which holds a space, so no YAML 1.1 type reads it).
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        self.0.deserialize(deserializer)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        while let Some(item) = seq.next_element_seed(self.0)? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key_seed(KeySeed(self.0))? {
            let value = map.next_value_seed(self.0)?;
            match key {
                // As go-yaml: a repeated key replaces the earlier value.
                Key::Name(key) => {
                    out.insert(key, value);
                }
                Key::Merge => merge(&mut out, value).map_err(A::Error::custom)?,
            }
        }
        Ok(Value::Object(out))
    }
}

/// go-yaml v2's `merge`: the keys of a mapping, or of each mapping in a sequence, are set into
/// the mapping being read, in place, as if written where the `<<` stands. So a key written
/// after the `<<` wins over the merged one, and a merged key wins over one written before it
/// (go-yaml v3 and YAML 1.1's spec let explicit keys always win; kubectl reads with v2). In a
/// sequence, earlier mappings win: v2 sets them from the last to the first.
fn merge(out: &mut Map<String, Value>, value: Value) -> Result<(), &'static str> {
    const NOT_A_MAP: &str =
        "a merge key (<<) takes a mapping or a list of mappings (as kubectl reads YAML)";
    match value {
        Value::Object(map) => out.extend(map),
        Value::Array(items) => {
            if !items.iter().all(Value::is_object) {
                return Err(NOT_A_MAP);
            }
            for item in items.into_iter().rev() {
                if let Value::Object(map) = item {
                    out.extend(map);
                }
            }
        }
        _ => return Err(NOT_A_MAP),
    }
    Ok(())
}

/// A mapping key: a name, as the string sigs.k8s.io/yaml makes of it, or a plain `<<`.
enum Key {
    Name(String),
    Merge,
}

/// A mapping key, as the string sigs.k8s.io/yaml makes of it.
struct KeySeed<'s>(Kube<'s>);

impl<'de, 's> DeserializeSeed<'de> for KeySeed<'s> {
    type Value = Key;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Key, D::Error> {
        deserializer.deserialize_any(KeyVisitor(self.0))
    }
}

struct KeyVisitor<'s>(Kube<'s>);

const KEY_ERROR: &str =
    "kubectl cannot use a null, list or mapping as a key; quote the key to make it a string";

impl<'de, 's> Visitor<'de> for KeyVisitor<'s> {
    type Value = Key;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a mapping key")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Key, E> {
        Ok(Key::Name(v.to_string()))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Key, E> {
        Ok(Key::Name(v.to_string()))
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Key, E> {
        // go-yaml gives an int for keys up to i64::MAX; above, a uint64, which
        // sigs.k8s.io/yaml does not turn into a string.
        if i64::try_from(v).is_ok() {
            Ok(Key::Name(v.to_string()))
        } else {
            Err(E::custom(format!(
                "kubectl cannot use the number {v} as a key; quote it"
            )))
        }
    }

    fn visit_i128<E: serde::de::Error>(self, v: i128) -> Result<Key, E> {
        Ok(Key::Name(float_key(v as f64)))
    }

    fn visit_u128<E: serde::de::Error>(self, v: u128) -> Result<Key, E> {
        Ok(Key::Name(float_key(v as f64)))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Key, E> {
        Ok(Key::Name(float_key(v)))
    }

    fn visit_borrowed_str<E: serde::de::Error>(self, v: &'de str) -> Result<Key, E> {
        if !self.0.is_plain(v) {
            return Ok(Key::Name(v.to_owned()));
        }
        match resolve(v) {
            Plain::Str => Ok(Key::Name(v.to_owned())),
            Plain::Bool(b) => Ok(Key::Name(b.to_string())),
            Plain::Int(n) => Ok(Key::Name(n.to_string())),
            Plain::Uint(n) => self.visit_u64(n),
            Plain::Float(f) => Ok(Key::Name(float_key(f))),
            Plain::Null => Err(E::custom(KEY_ERROR)),
            Plain::Merge => Ok(Key::Merge),
        }
    }

    fn visit_str<E>(self, v: &str) -> Result<Key, E> {
        Ok(Key::Name(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Key, E> {
        Ok(Key::Name(v))
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<Key, E> {
        Err(E::custom(KEY_ERROR))
    }

    fn visit_none<E: serde::de::Error>(self) -> Result<Key, E> {
        Err(E::custom(KEY_ERROR))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, _seq: A) -> Result<Key, A::Error> {
        Err(A::Error::custom(KEY_ERROR))
    }

    fn visit_map<A: MapAccess<'de>>(self, _map: A) -> Result<Key, A::Error> {
        Err(A::Error::custom(KEY_ERROR))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_as_go_yaml_v2() {
        use Plain::*;
        for (text, want) in [
            ("yes", Bool(true)),
            ("Y", Bool(true)),
            ("off", Bool(false)),
            ("n", Bool(false)),
            ("~", Null),
            ("0400", Int(256)),
            ("-0400", Int(-256)),
            ("0o400", Int(256)),
            ("0O17", Int(15)),
            ("0x1F", Int(31)),
            ("0X1f", Int(31)),
            ("1_000", Int(1000)),
            ("+12", Int(12)),
            ("0b101", Int(5)),
            ("0B11", Int(3)),
            ("-0b11", Int(-3)),
            ("0", Int(0)),
            ("-9223372036854775808", Int(i64::MIN)),
            ("9223372036854775808", Uint(9223372036854775808)),
            ("08", Float(8.0)),
            ("1e3", Float(1000.0)),
            ("1_000.5", Float(1000.5)),
            (".5", Float(0.5)),
            ("5.", Float(5.0)),
            ("+.5e2", Float(50.0)),
            ("1:20", Str),
            ("2024-01-01", Str),
            ("1.28.0", Str),
            ("100m", Str),
            ("=", Str),
            ("<<", Merge),
            ("1e400", Str),
            ("0x", Str),
            ("-", Str),
            ("yess", Str),
            (".e3", Str),
        ] {
            assert_eq!(resolve(text), want, "{text}");
        }
    }

    #[test]
    fn float_keys_format_as_go_does() {
        for (f, want) in [
            (1.5, "1.5"),
            (1000.0, "1000"),
            (0.1, "0.1"),
            (1e6, "1e+06"),
            (1234567.0, "1.234567e+06"),
            (123456.0, "123456"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (-2.5, "-2.5"),
        ] {
            assert_eq!(float_key(f), want, "{f}");
        }
    }

    #[test]
    fn floats_become_json_as_go_writes_them() {
        assert_eq!(float_value(1000.0).unwrap(), Value::from(1000));
        assert_eq!(float_value(0.5).unwrap(), serde_json::json!(0.5));
        assert!(float_value(f64::INFINITY).is_err());
    }
}
