//! The pod as templates see it, read in place.
//!
//! Converting a pod into template values up front copies every field, thousands of env vars
//! included, although a template reads a handful. A `JsonView` is a template value that points
//! into the pod and converts only what a template actually touches.

use std::sync::Arc;

use minijinja::Value as J;
use minijinja::value::{Enumerator, Object, ObjectRepr};
use serde_json::Value;

/// One step from the root to a node.
#[derive(Debug, Clone)]
enum Step {
    Key(String),
    Index(usize),
}

/// A mapping or list inside a shared JSON document.
#[derive(Debug)]
pub(crate) struct JsonView {
    root: Arc<Value>,
    path: Vec<Step>,
}

impl JsonView {
    /// A template value for the node at `pointer` (a JSON pointer) of `root`, or undefined when
    /// there is none.
    pub(crate) fn at(root: &Arc<Value>, pointer: &str) -> J {
        let mut path = Vec::new();
        let mut node = root.as_ref();
        for token in pointer.split('/').skip(1) {
            match node {
                Value::Object(m) => match m.get(token) {
                    Some(child) => {
                        path.push(Step::Key(token.to_string()));
                        node = child;
                    }
                    None => return J::UNDEFINED,
                },
                _ => return J::UNDEFINED,
            }
        }
        wrap(root, path, node)
    }

    fn node(&self) -> &Value {
        let mut node = self.root.as_ref();
        for step in &self.path {
            node = match (node, step) {
                (Value::Object(m), Step::Key(k)) => m.get(k).unwrap_or(&Value::Null),
                (Value::Array(a), Step::Index(i)) => a.get(*i).unwrap_or(&Value::Null),
                _ => &Value::Null,
            };
        }
        node
    }

    fn child(&self, step: Step, node: &Value) -> J {
        let mut path = self.path.clone();
        path.push(step);
        wrap(&self.root, path, node)
    }
}

/// Scalars become template values directly; mappings and lists stay views.
fn wrap(root: &Arc<Value>, path: Vec<Step>, node: &Value) -> J {
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
            path,
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
        match self.node() {
            Value::Object(m) => {
                let k = key.as_str()?;
                let child = m.get(k)?;
                Some(self.child(Step::Key(k.to_string()), child))
            }
            Value::Array(a) => {
                let i = key.as_usize()?;
                let child = a.get(i)?;
                Some(self.child(Step::Index(i), child))
            }
            _ => None,
        }
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        match self.node() {
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
        let with_view = env
            .render_str(
                text,
                minijinja::context! { spec => JsonView::at(&pod, "/spec") },
            )
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
}
