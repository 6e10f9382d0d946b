//! YAML in and out, as raw JSON values.
//!
//! Manifests are read into `serde_json::Value` so that nothing the user wrote is dropped on the
//! way through (no typed Kubernetes structs), and written back as YAML.

use serde_json::Value;

mod block;

/// A YAML document that could not be read.
#[derive(Debug, thiserror::Error)]
#[error("document {document}{}: {message}", line.map(|l| format!(", line {l}")).unwrap_or_default())]
pub struct YamlError {
    /// 1-based index of the document in the stream.
    pub document: usize,
    /// 1-based line in the whole stream, when the parser knows it.
    pub line: Option<usize>,
    pub message: String,
}

/// Parses a multi-document YAML stream. Empty documents (a lone `---`, comments only) are
/// dropped, as kubectl does.
pub fn parse_documents(text: &str) -> Result<Vec<Value>, YamlError> {
    use serde::de::DeserializeSeed;
    let mut docs = Vec::new();
    for (i, doc) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let value = crate::value::Exact
            .deserialize(doc)
            .map_err(|e| YamlError {
                document: i + 1,
                line: e.location().map(|l| l.line()),
                message: strip_location(&e.to_string()),
            })?;
        if !value.is_null() {
            docs.push(value);
        }
    }
    Ok(docs)
}

/// Parses one YAML (or JSON) document.
pub fn parse_one(text: &str) -> Result<Value, YamlError> {
    use serde::de::DeserializeSeed;
    let doc = serde_yaml_ng::Deserializer::from_str(text);
    crate::value::Exact.deserialize(doc).map_err(|e| YamlError {
        document: 1,
        line: e.location().map(|l| l.line()),
        message: strip_location(&e.to_string()),
    })
}

/// Parses one document rendered by an injection template: the common block-style subset is
/// read by a fast reader (the full parser would be most of an injection's CPU), anything else
/// by the full parser.
pub fn parse_rendered(text: &str) -> Result<Value, YamlError> {
    match block::parse(text) {
        Some(value) => {
            // Debug builds (every test run) check each fast read against the full parser.
            debug_assert!(
                parse_one(text).ok().as_ref() == Some(&value),
                "the fast YAML reader disagrees with the full parser on:\n{text}"
            );
            Ok(value)
        }
        None => parse_one(text),
    }
}

/// Writes one value as a YAML document (no leading `---`).
pub fn to_string(value: &Value) -> String {
    // Serializing a serde_json::Value cannot fail: every key is a string.
    serde_yaml_ng::to_string(value).unwrap_or_default()
}

/// Writes documents separated by `---`, as `kubectl` and `istioctl kube-inject` print them.
pub fn to_documents(values: &[Value]) -> String {
    let mut out = String::new();
    for (i, v) in values.iter().enumerate() {
        if i > 0 {
            out.push_str("---\n");
        }
        out.push_str(&to_string(v));
    }
    out
}

/// serde_yaml appends " at line L column C" to its messages; we report the line separately.
fn strip_location(message: &str) -> String {
    match message.find(" at line ") {
        Some(i) => message[..i].to_string(),
        None => message.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_document_stream_skips_empty_documents() {
        let docs = parse_documents("---\na: 1\n---\n# nothing\n---\nb: [x]\n").unwrap();
        assert_eq!(
            docs,
            vec![serde_json::json!({"a": 1}), serde_json::json!({"b": ["x"]})]
        );
    }

    #[test]
    fn errors_name_the_document_and_line() {
        let err = parse_documents("a: 1\n---\nb: [\n").unwrap_err();
        assert_eq!(err.document, 2);
        assert!(err.line.is_some(), "{err}");
    }

    #[test]
    fn round_trip_keeps_strings_that_look_like_numbers() {
        let v = serde_json::json!({"port": "15001", "n": 1, "s": "a: b\n- c"});
        assert_eq!(parse_one(&to_string(&v)).unwrap(), v);
    }
}
