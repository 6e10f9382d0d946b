//! JSON values read from outside, exactly as written.
//!
//! `serde_json::Value`'s own `Deserialize` gives one object key a meaning: with serde_json's
//! `raw_value` feature on (axum turns it on for the whole build), an object whose first key is
//! `$serde_json::private::RawValue` is read as the JSON text held in its value, so
//! `{"$serde_json::private::RawValue": "[1,2]"}` in a pod would become `[1,2]`. A key is just a
//! key in a pod, so everything read from a review, a manifest or an annotation goes through the
//! plain visitor below instead.

use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

/// Reads a JSON document.
pub fn from_slice(bytes: &[u8]) -> serde_json::Result<Value> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = Exact.deserialize(&mut de)?;
    de.end()?;
    Ok(value)
}

/// Reads a JSON document.
pub fn from_str(text: &str) -> serde_json::Result<Value> {
    from_slice(text.as_bytes())
}

/// Deserializes any self-describing format (JSON, YAML) into a `Value`, every key taken as a key.
#[derive(Debug, Clone, Copy)]
pub struct Exact;

impl<'de> DeserializeSeed<'de> for Exact {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(ExactVisitor)
    }
}

struct ExactVisitor;

impl<'de> Visitor<'de> for ExactVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
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

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        // Like serde_json: a float JSON cannot hold (NaN, infinity) becomes null.
        Ok(Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

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
        Exact.deserialize(deserializer)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        while let Some(item) = seq.next_element_seed(Exact)? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let value = map.next_value_seed(Exact)?;
            out.insert(key, value);
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const MAGIC: &str = "$serde_json::private::RawValue";

    #[test]
    fn a_key_is_a_key() {
        let text = format!(r#"{{"metadata": {{"{MAGIC}": "[1,2]", "b": 1}}}}"#);
        assert_eq!(
            from_str(&text).unwrap(),
            json!({"metadata": {MAGIC: "[1,2]", "b": 1}})
        );
        // What this module is for: serde_json's own reading gives something else.
        let theirs: Result<Value, _> = serde_json::from_str(&text);
        assert_ne!(
            theirs.ok(),
            Some(json!({"metadata": {MAGIC: "[1,2]", "b": 1}}))
        );
    }

    #[test]
    fn reads_like_serde_json_otherwise() {
        for text in [
            r#"{"a": [1, -2, 18446744073709551615, 1.5, 9.198262618227505e-121, "x\u00e9\n", true, null, {}]}"#,
            r#"{"dup": 1, "dup": 2, "z": 0, "a": 1}"#,
            "[]",
            "\"s\"",
            "-0",
        ] {
            let theirs: Value = serde_json::from_str(text).unwrap();
            assert_eq!(from_str(text).unwrap(), theirs, "{text}");
        }
        assert!(from_str("{\"a\": 1} x").is_err());
        assert!(from_str("{\"a\": ").is_err());
    }
}
