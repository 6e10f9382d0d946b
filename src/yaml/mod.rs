//! YAML in and out, as raw JSON values.
//!
//! Manifests are read into `serde_json::Value` so that nothing the user wrote is dropped on the
//! way through (no typed Kubernetes structs), and written back as YAML.

use serde_json::Value;

mod block;
mod emit;
pub(crate) mod kube;

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

/// Parses a multi-document stream of manifests as kubectl reads it (YAML 1.1 scalars, see
/// [`kube`]). Empty documents (a lone `---`, comments only) are dropped, as kubectl does.
pub fn parse_documents(text: &str) -> Result<Vec<Value>, YamlError> {
    Ok(Stream::parse(text)?
        .documents()
        .filter_map(|d| d.value.clone())
        .collect())
}

/// A stream of manifests, each document with the text it was read from, so that a document
/// the caller leaves alone is written back byte for byte (comments, quoting and all).
#[derive(Debug)]
pub struct Stream<'a> {
    pieces: Vec<Piece<'a>>,
}

#[derive(Debug)]
enum Piece<'a> {
    /// A `---` line, with its comment and line break.
    Marker(&'a str),
    Document(Document<'a>),
}

/// One document of a [`Stream`].
#[derive(Debug)]
pub struct Document<'a> {
    /// The original text, from the line after the `---` line that opens it (or the start of
    /// the stream) to the next `---` line.
    pub text: &'a str,
    /// What kubectl reads from it; `None` for a document with no content.
    pub value: Option<Value>,
    /// Its 1-based position among the stream's documents, for messages.
    pub number: usize,
}

impl<'a> Stream<'a> {
    /// Splits the stream into documents as kubectl does and reads each one.
    ///
    /// kubectl does not leave the splitting to the YAML parser: its reader
    /// (k8s.io/apimachinery `yaml.YAMLReader`) cuts the stream at every line that starts with
    /// `---`, refuses such a line when anything but a comment follows the dashes (`--- {a: 1}`,
    /// `---x`), and hands each piece to go-yaml on its own. Here too; a piece with content after
    /// a `...` end marker is refused, as kubectl reads only a piece's first document and drops
    /// the rest.
    pub fn parse(text: &'a str) -> Result<Stream<'a>, YamlError> {
        let mut pieces = Vec::new();
        let mut number = 0;
        let mut start = 0;
        let mut first_line = 1;
        let mut finish = |pieces: &mut Vec<Piece<'a>>, chunk: &'a str, first_line: usize| {
            if chunk.is_empty() {
                return Ok(());
            }
            let value = if has_content(chunk) {
                number += 1;
                read_document(chunk, number, first_line)?
            } else {
                None
            };
            pieces.push(Piece::Document(Document {
                text: chunk,
                value: value.filter(|v| !v.is_null()),
                number,
            }));
            Ok::<(), YamlError>(())
        };
        let mut line_start = 0;
        let mut line = 1;
        while line_start < text.len() {
            let end = text[line_start..]
                .find('\n')
                .map_or(text.len(), |i| line_start + i + 1);
            let this = &text[line_start..end];
            if let Some(rest) = this.strip_prefix("---") {
                let rest = rest.trim();
                if !rest.is_empty() && !rest.starts_with('#') {
                    return Err(YamlError {
                        document: number + 1,
                        line: Some(line),
                        message: format!(
                            "invalid document separator: {rest} (kubectl takes only a comment after ---; start the document on the next line)"
                        ),
                    });
                }
                finish(&mut pieces, &text[start..line_start], first_line)?;
                pieces.push(Piece::Marker(this));
                start = end;
                first_line = line + 1;
            }
            line_start = end;
            line += 1;
        }
        finish(&mut pieces, &text[start..], first_line)?;
        Ok(Stream { pieces })
    }

    /// The documents, in order (empty ones included, with no value).
    pub fn documents(&self) -> impl Iterator<Item = &Document<'a>> {
        self.pieces.iter().filter_map(|p| match p {
            Piece::Document(d) => Some(d),
            Piece::Marker(_) => None,
        })
    }

    /// The stream again, with each document for which `replace` gives a value written anew (its
    /// leading comment lines kept) and every other byte as it came.
    pub fn write(&self, mut replace: impl FnMut(&Document<'a>) -> Option<Value>) -> String {
        let mut out = String::new();
        for piece in &self.pieces {
            match piece {
                Piece::Marker(text) => {
                    if !out.is_empty() && !out.ends_with('\n') {
                        out.push('\n');
                    }
                    out.push_str(text);
                }
                Piece::Document(doc) => match replace(doc) {
                    None => out.push_str(doc.text),
                    Some(value) => {
                        out.push_str(leading_comments(doc.text));
                        out.push_str(&to_string(&value));
                    }
                },
            }
        }
        out
    }
}

/// Whether a document's text holds anything but blank lines and comments.
fn has_content(text: &str) -> bool {
    text.lines().any(|l| {
        // Only spaces are blank: a tab is for the parser to judge.
        let t = l.trim_matches(' ');
        !t.is_empty() && !t.starts_with('#')
    })
}

/// The blank and comment lines that open a document (Helm's `# Source:` line).
fn leading_comments(text: &str) -> &str {
    let mut end = 0;
    for line in text.split_inclusive('\n') {
        let t = line.trim();
        if !(t.is_empty() || t.starts_with('#')) || !line.ends_with('\n') {
            break;
        }
        end += line.len();
    }
    &text[..end]
}

/// Reads one document's text the way kubectl does. `first_line` is where it starts in the
/// stream, for messages.
fn read_document(text: &str, number: usize, first_line: usize) -> Result<Option<Value>, YamlError> {
    use serde::de::DeserializeSeed;
    // `{{ .Values.x }}` reads as a flow mapping inside a flow mapping, which is an error far from
    // the cause: say what it is.
    let helm = text.contains("{{") && text.contains("}}");
    let error = |e: serde_yaml_ng::Error| YamlError {
        document: number,
        line: e.location().map(|l| l.line() + first_line - 1),
        message: match strip_location(&e.to_string()) {
            m if helm => format!(
                "looks like an unrendered Helm template: run `helm template` first (the YAML reader says: {m})"
            ),
            m => m,
        },
    };
    let mut value = None;
    for doc in serde_yaml_ng::Deserializer::from_str(text) {
        if value.is_some() {
            return Err(YamlError {
                document: number,
                line: None,
                message: "a second document after `...` without a `---` line: kubectl would drop it; separate documents with ---".into(),
            });
        }
        value = Some(
            kube::Kube { source: text }
                .deserialize(doc)
                .map_err(error)?,
        );
    }
    Ok(value)
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

/// Writes one value as a YAML document (no leading `---`) that YAML 1.1 readers (kubectl) and
/// YAML 1.2 readers both take back as the same value (see [`emit`]).
pub fn to_string(value: &Value) -> String {
    emit::document(value)
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

    #[test]
    fn reads_scalars_as_kubectl_does() {
        let docs = parse_documents(
            "a: yes\nb: \"yes\"\nc: 0400\nd: '0400'\ne: 1_000\nf: on\ny: 1\n0x10: k\ng: 1e3\nh: |\n  no\n",
        )
        .unwrap();
        assert_eq!(
            docs,
            vec![
                serde_json::json!({"a": true, "b": "yes", "c": 256, "d": "0400", "e": 1000,
                "f": true, "true": 1, "16": "k", "g": 1000, "h": "no\n"})
            ]
        );
        let err = parse_documents("a: 1\n---\nb: .inf\n").unwrap_err();
        assert_eq!((err.document, err.line), (2, Some(3)), "{err}");
        assert_eq!(
            parse_documents("base: &b {x: 1}\nm:\n  <<: *b\n  z: 2\n").unwrap(),
            vec![serde_json::json!({"base": {"x": 1}, "m": {"x": 1, "z": 2}})]
        );
    }

    #[test]
    fn documents_left_alone_are_written_back_byte_for_byte() {
        let text = "# leading comment\n---\n# Source: a.yaml\napiVersion: v1\nkind: ConfigMap\ndata: {a: yes, b: 0400}  # note\n--- # inline\nkind: Pod\nmetadata: {name: p}\n...\n---\n\n# only a comment\n---\nlast: doc";
        let stream = Stream::parse(text).unwrap();
        let values: Vec<_> = stream.documents().map(|d| d.value.clone()).collect();
        assert_eq!(values.len(), 5, "{values:?}");
        assert_eq!(values.iter().flatten().count(), 3);
        assert_eq!(stream.write(|_| None), text);
        // A replaced document keeps its leading comments and the markers around it.
        let out = stream.write(|d| {
            (d.value.as_ref().and_then(|v| v.get("kind")) == Some(&Value::from("Pod")))
                .then(|| serde_json::json!({"kind": "Pod", "x": "on"}))
        });
        assert_eq!(
            out,
            "# leading comment\n---\n# Source: a.yaml\napiVersion: v1\nkind: ConfigMap\ndata: {a: yes, b: 0400}  # note\n--- # inline\nkind: Pod\nx: 'on'\n---\n\n# only a comment\n---\nlast: doc"
        );
        let last = stream.write(|d| {
            d.value
                .as_ref()
                .filter(|v| v.get("last").is_some())
                .cloned()
        });
        assert!(last.ends_with("---\nlast: doc\n"), "{last}");
    }

    #[test]
    fn the_stream_is_split_as_kubectl_splits_it() {
        for (text, line) in [
            ("--- {a: 1}\n", 1),
            ("a: 1\n---x\nb: 2\n", 2),
            ("a: 1\n--- !!map\nb: 2\n", 2),
        ] {
            let err = Stream::parse(text).unwrap_err();
            assert_eq!(err.line, Some(line), "{text:?}: {err}");
            assert!(
                err.message.starts_with("invalid document separator"),
                "{err}"
            );
        }
        // kubectl reads one document per piece: what follows `...` would be dropped.
        assert!(Stream::parse("a: 1\n...\nb: 2\n").is_err());
        assert!(Stream::parse("%YAML 1.1\n---\na: 1\n").is_err());
        let ok = "--- # comment\na: 1\n---   \nb: 2\n...\n";
        let stream = Stream::parse(ok).unwrap();
        assert_eq!(stream.documents().filter(|d| d.value.is_some()).count(), 2);
        assert_eq!(stream.write(|_| None), ok);
    }

    proptest::proptest! {
        /// Whatever a stream holds, writing it back with nothing replaced gives its text.
        #[test]
        fn a_stream_left_alone_is_its_text(pieces in proptest::collection::vec(
            proptest::sample::select(vec![
                "---", "--- ", "---x", "...", "\n", "\r\n", "# c", " ", "a: 1", "b: yes", "- x",
                "%YAML 1.1", "|", "  text", "'q", "\"", "{", "}", "k:", "\t",
            ]),
            0..12,
        )) {
            let text = pieces.concat();
            if let Ok(stream) = Stream::parse(&text) {
                proptest::prop_assert_eq!(stream.write(|_| None), text);
            }
        }
    }
}
