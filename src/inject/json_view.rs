//! JSON documents as templates see them, read in place, with a record of what was read.
//!
//! Converting a pod into template values up front copies every field, thousands of env vars
//! included, although a template reads a handful. A `JsonView` is a template value that points
//! into a shared document and converts only what a template actually touches.
//!
//! Every read also lands in a [`Reads`] log: which node was looked at and what the template
//! learnt from it (a scalar's value, that a node is a mapping, a mapping's keys, a list's
//! length). A template is a pure function of what it reads, so two contexts that answer every
//! logged read the same way render the same text; `renders` builds its memo on that.

use std::sync::{Arc, Mutex};

use minijinja::Value as J;
use minijinja::value::{Enumerator, Object, ObjectRepr};
use serde_json::Value;

/// Which document of the context a path starts from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Source {
    /// The pod being injected.
    Pod,
    /// The facts computed about it (see `context`).
    Facts,
}

/// One step from a document's root to a node.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Step {
    Key(String),
    Index(usize),
}

/// What a template learnt from one node.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Seen {
    /// There is no such node (or it sits under a scalar).
    Missing,
    /// A null, boolean, number or string: its exact value (`1` and `1.0` differ).
    Scalar(Value),
    /// A mapping or a list, without its contents.
    Container { list: bool },
    /// A mapping's keys, in order (loops see them in that order).
    Keys(Vec<String>),
    /// A list's length.
    Len(usize),
    /// A name the configuration answers, the same for every pod that gets it.
    Config,
    /// Something no other context can be shown to answer alike (the whole root was listed).
    Unrepeatable,
}

impl Seen {
    /// Whether a read answered this way (`None`: by the configuration; else the node reached,
    /// if any; see `Context::node`) teaches a template exactly this.
    pub(crate) fn answered_by(&self, answer: Option<Option<&Value>>) -> bool {
        match answer {
            None => *self == Seen::Config,
            Some(node) => self.holds(node),
        }
    }

    /// Whether reading `node` (the same way) teaches a template exactly this.
    pub(crate) fn holds(&self, node: Option<&Value>) -> bool {
        match (self, node) {
            (Seen::Missing, None) => true,
            (Seen::Scalar(v), Some(n)) => !n.is_object() && !n.is_array() && v == n,
            (Seen::Container { list }, Some(n)) => {
                (*list && n.is_array()) || (!*list && n.is_object())
            }
            (Seen::Keys(keys), Some(Value::Object(m))) => {
                m.len() == keys.len() && m.keys().zip(keys).all(|(a, b)| a == b)
            }
            (Seen::Len(len), Some(Value::Array(a))) => a.len() == *len,
            _ => false,
        }
    }
}

/// One logged read.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Read {
    pub source: Source,
    pub path: Vec<Step>,
    pub seen: Seen,
}

/// The reads of one render, shared by every view it creates.
#[derive(Debug, Default)]
pub(crate) struct Reads(Mutex<Vec<Read>>);

impl Reads {
    pub(crate) fn push(&self, read: Read) {
        // A poisoned log only follows a panic elsewhere; the render is then not remembered
        // because `take` reports nothing usable (see `renders`).
        if let Ok(mut log) = self.0.lock() {
            log.push(read);
        }
    }

    /// Everything logged so far, leaving the log empty for the next render.
    pub(crate) fn take(&self) -> Option<Vec<Read>> {
        self.0.lock().ok().map(|mut log| std::mem::take(&mut *log))
    }
}

/// The node at `path` of `root`, or `None` when there is none.
pub(crate) fn resolve<'a>(root: &'a Value, path: &[Step]) -> Option<&'a Value> {
    let mut node = root;
    for step in path {
        node = match (node, step) {
            // Comparing a few keys costs less than hashing one; pod maps are mostly small.
            (Value::Object(m), Step::Key(k)) if m.len() <= 8 => {
                m.iter().find(|(key, _)| *key == k).map(|(_, v)| v)?
            }
            (Value::Object(m), Step::Key(k)) => m.get(k)?,
            (Value::Array(a), Step::Index(i)) => a.get(*i)?,
            _ => return None,
        };
    }
    Some(node)
}

/// What a template learns from reaching `node` (before it looks inside).
pub(crate) fn seen(node: Option<&Value>) -> Seen {
    match node {
        None => Seen::Missing,
        Some(Value::Object(_)) => Seen::Container { list: false },
        Some(Value::Array(_)) => Seen::Container { list: true },
        Some(scalar) => Seen::Scalar(scalar.clone()),
    }
}

/// What a template learns from listing `node`'s entries.
pub(crate) fn listed(node: Option<&Value>) -> Seen {
    match node {
        Some(Value::Object(m)) => Seen::Keys(m.keys().cloned().collect()),
        Some(Value::Array(a)) => Seen::Len(a.len()),
        other => seen(other),
    }
}

/// A mapping or list inside a shared JSON document.
#[derive(Debug)]
pub(crate) struct JsonView {
    root: Arc<Value>,
    source: Source,
    path: Vec<Step>,
    reads: Arc<Reads>,
}

impl JsonView {
    /// A template value for the node at `path` of `root` (undefined when there is none), with
    /// the read logged.
    pub(crate) fn at(root: &Arc<Value>, source: Source, path: Vec<Step>, reads: &Arc<Reads>) -> J {
        let node = resolve(root, &path);
        reads.push(Read {
            source,
            path: path.clone(),
            seen: seen(node),
        });
        match node {
            None => J::UNDEFINED,
            Some(node) => wrap(root, source, path, node, reads),
        }
    }

    fn node(&self) -> &Value {
        resolve(&self.root, &self.path).unwrap_or(&Value::Null)
    }
}

/// Scalars become template values directly; mappings and lists stay views.
fn wrap(root: &Arc<Value>, source: Source, path: Vec<Step>, node: &Value, reads: &Arc<Reads>) -> J {
    match node {
        Value::Null => J::from(()),
        Value::Bool(b) => J::from(*b),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                J::from(i)
            } else if let Some(u) = n.as_u64() {
                J::from(u)
            } else {
                J::from(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        Value::String(s) => J::from(s.as_str()),
        Value::Object(_) | Value::Array(_) => J::from_object(JsonView {
            root: Arc::clone(root),
            source,
            path,
            reads: Arc::clone(reads),
        }),
    }
}

impl Object for JsonView {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        match self.node() {
            Value::Array(_) => ObjectRepr::Seq,
            _ => ObjectRepr::Map,
        }
    }

    fn get_value(self: &Arc<Self>, key: &J) -> Option<J> {
        let step = match self.node() {
            Value::Object(_) => Step::Key(key.as_str()?.to_string()),
            Value::Array(_) => Step::Index(key.as_usize()?),
            _ => return None,
        };
        let mut path = self.path.clone();
        path.push(step);
        let child = JsonView::at(&self.root, self.source, path, &self.reads);
        (!child.is_undefined()).then_some(child)
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        let node = self.node();
        self.reads.push(Read {
            source: self.source,
            path: self.path.clone(),
            seen: listed(Some(node)),
        });
        match node {
            Value::Object(m) => {
                let keys: Vec<J> = m.keys().map(|k| J::from(k.as_str())).collect();
                Enumerator::Values(keys)
            }
            Value::Array(a) => Enumerator::Seq(a.len()),
            _ => Enumerator::Empty,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn view(doc: &Arc<Value>, reads: &Arc<Reads>) -> J {
        JsonView::at(doc, Source::Pod, vec![Step::Key("spec".into())], reads)
    }

    #[test]
    fn templates_read_views_like_converted_values() {
        let pod = Arc::new(json!({"spec": {"containers": [
            {"name": "a", "ports": [{"containerPort": 80}], "env": [{"name": "X", "value": "1"}]},
            {"name": "b"}], "hostNetwork": false, "n": 1.5}}));
        let mut env = minijinja::Environment::new();
        env.set_auto_escape_callback(|_| minijinja::AutoEscape::Json);
        env.set_undefined_behavior(minijinja::UndefinedBehavior::Chainable);
        let text = "{{ spec.containers | length }} {{ spec.containers[0].name }} {{ spec.containers[0].ports[0].containerPort }} \
                    {% for c in spec.containers %}{{ c.name }}{% endfor %} {% for k in spec | dictsort %}{{ k[0] }},{% endfor %} \
                    {{ spec.containers[0].env }} {{ spec.missing.deeper is undefined }} {{ spec.hostNetwork }} {{ spec.n }}";
        let reads = Arc::new(Reads::default());
        let with_view = env
            .render_str(text, minijinja::context! { spec => view(&pod, &reads) })
            .unwrap();
        let converted = env
            .render_str(
                text,
                minijinja::context! { spec => J::from(minijinja::value::Serde(&pod["spec"])) },
            )
            .unwrap_or_else(|e| format!("{e}"));
        assert_eq!(with_view, converted);
        assert!(
            with_view.contains(r#"[{"name":"X","value":"1"}]"#),
            "{with_view}"
        );
    }

    #[test]
    fn reads_record_what_the_template_learnt() {
        let pod = Arc::new(json!({"spec": {"a": 1, "m": {"x": "y", "z": 2}, "l": [1, 2, 3]}}));
        let env = minijinja::Environment::new();
        let reads = Arc::new(Reads::default());
        let out = env
            .render_str(
                "{{ spec.a }}{% for k in spec.m %}{{ k }}{% endfor %}{{ spec.l | length }}{{ spec.nope }}",
                minijinja::context! { spec => view(&pod, &reads) },
            )
            .unwrap();
        assert_eq!(out, "1xz3");
        let log = reads.take().unwrap();
        let key = |k: &str| Step::Key(k.into());
        let has =
            |path: Vec<Step>, seen: Seen| log.iter().any(|r| r.path == path && r.seen == seen);
        assert!(has(vec![key("spec"), key("a")], Seen::Scalar(json!(1))));
        assert!(has(
            vec![key("spec"), key("m")],
            Seen::Keys(vec!["x".into(), "z".into()])
        ));
        assert!(has(vec![key("spec"), key("l")], Seen::Len(3)));
        assert!(has(vec![key("spec"), key("nope")], Seen::Missing));
        // The values behind the keys were never read, so they are not in the log.
        assert!(
            !log.iter()
                .any(|r| r.path == vec![key("spec"), key("m"), key("z")])
        );
        assert!(reads.take().unwrap().is_empty());
    }
}
