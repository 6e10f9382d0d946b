//! Injection templates: Jinja (minijinja) compiled once per configuration load.
//!
//! Every `{{ expression }}` is written as JSON (DESIGN.md decision 4): a string comes out quoted
//! and escaped, a number as a number, a list or a map in flow style. JSON is valid YAML, so no
//! value taken from the pod (an annotation, a label, a name) can add structure to the rendered
//! YAML. A template that really wants to splice raw text must say `|safe`.

use std::fmt;

use minijinja::value::Value;
use minijinja::{AutoEscape, Environment, Error, ErrorKind, State, UndefinedBehavior};

use super::ConfigError;

/// The compiled templates of one configuration.
pub struct Templates {
    env: Environment<'static>,
    names: Vec<String>,
}

impl fmt::Debug for Templates {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Templates")
            .field("names", &self.names)
            .finish()
    }
}

impl Templates {
    /// Compiles every template; the first that does not parse is the error, with its line.
    pub fn compile(sources: &[(String, String)]) -> Result<Templates, ConfigError> {
        let mut env = Environment::new();
        env.set_auto_escape_callback(|_| AutoEscape::Json);
        // Values files differ between Istio versions: a missing nested key must read as
        // undefined (falsy), not abort rendering.
        env.set_undefined_behavior(UndefinedBehavior::Chainable);
        env.add_function("annotation", annotation);
        env.add_function("has_annotation", has_annotation);
        env.add_function("exclude_inbound_port", exclude_inbound_port);
        let mut names = Vec::with_capacity(sources.len());
        for (name, text) in sources {
            env.add_template_owned(name.clone(), text.clone())
                .map_err(|e| ConfigError::Invalid {
                    key: format!("config: template {name:?}"),
                    line: e.line(),
                    message: e.detail().unwrap_or("syntax error").to_string(),
                })?;
            names.push(name.clone());
        }
        Ok(Templates { env, names })
    }

    /// Whether a template of that name exists.
    pub fn contains(&self, name: &str) -> bool {
        self.names.iter().any(|n| n == name)
    }

    /// The template names, in the order they were configured.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Renders one template with the given context.
    pub fn render(&self, name: &str, ctx: &Value) -> Result<String, Error> {
        self.env.get_template(name)?.render(ctx)
    }
}

/// Reads `metadata.annotations` of the pod in the template context.
fn pod_annotation(state: &State, name: &str) -> Option<Value> {
    let annotations = state
        .lookup("metadata")?
        .get_attr("annotations")
        .ok()
        .filter(|v| !v.is_undefined() && !v.is_none())?;
    annotations
        .get_item(&Value::from(name))
        .ok()
        .filter(|v| !v.is_undefined())
}

/// `annotation(name, default)`: the pod's annotation if the key is present (even when empty),
/// else the default, as istiod's template function.
fn annotation(state: &State, name: &str, default: Option<Value>) -> Value {
    pod_annotation(state, name).unwrap_or_else(|| default.unwrap_or_else(|| Value::from("")))
}

/// `has_annotation(name)`: whether the pod carries the annotation at all.
fn has_annotation(state: &State, name: &str) -> bool {
    pod_annotation(state, name).is_some()
}

/// `exclude_inbound_port(port, list)`: appends the agent's status port to a comma list of
/// inbound ports to exclude from capture, unless it is empty, `0`, or already there.
fn exclude_inbound_port(port: Value, list: Option<Value>) -> Result<String, Error> {
    let port = port.to_string();
    let port = port.trim();
    let list = match list {
        None => String::new(),
        Some(v) if v.is_undefined() || v.is_none() => String::new(),
        Some(v) => match v.as_str() {
            Some(s) => s.to_string(),
            None if v.is_number() => v.to_string(),
            None => {
                return Err(Error::new(
                    ErrorKind::InvalidOperation,
                    "exclude_inbound_port: the list must be a comma-separated string",
                ));
            }
        },
    };
    if port.is_empty() || port == "0" {
        return Ok(list);
    }
    let mut out: Vec<&str> = Vec::new();
    for item in list.split(',') {
        let item = item.trim();
        if item == port {
            return Ok(list);
        }
        if !item.is_empty() {
            out.push(item);
        }
    }
    out.push(port);
    Ok(out.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compile(text: &str) -> Result<Templates, ConfigError> {
        Templates::compile(&[("t".to_string(), text.to_string())])
    }

    #[test]
    fn expressions_are_json_escaped() {
        let t = compile("a: {{ v }}\nb: {{ n }}\n").unwrap();
        let ctx = minijinja::context! { v => "x\nprivileged: true", n => 5 };
        let out = t.render("t", &ctx).unwrap();
        assert_eq!(out, "a: \"x\\nprivileged: true\"\nb: 5");
    }

    #[test]
    fn syntax_errors_name_the_template_and_line() {
        let err = compile("a: 1\nb: {{ x \n").unwrap_err().to_string();
        assert!(
            err.starts_with("invalid `config: template \"t\"` at line"),
            "{err}"
        );
    }

    #[test]
    fn annotation_helpers_read_the_pod_metadata() {
        let t = compile(
            "{{ annotation('a', 'd') }} {{ annotation('missing', 'd') }} {{ annotation('empty', 'd') }} {{ has_annotation('a') }} {{ has_annotation('b') }}",
        )
        .unwrap();
        let ctx = minijinja::context! { metadata => minijinja::context! { annotations => minijinja::context! { a => "x", empty => "" } } };
        assert_eq!(t.render("t", &ctx).unwrap(), r#""x" "d" "" true false"#);
        let no_annotations = minijinja::context! { metadata => minijinja::context! {} };
        assert_eq!(
            t.render("t", &no_annotations).unwrap(),
            r#""d" "d" "d" false false"#
        );
    }

    #[test]
    fn exclude_inbound_port_appends_once() {
        let f = |p: Value, l: &str| exclude_inbound_port(p, Some(Value::from(l))).unwrap();
        assert_eq!(f(Value::from(15020), ""), "15020");
        assert_eq!(f(Value::from(15020), "80, 81"), "80,81,15020");
        assert_eq!(f(Value::from(15020), "80,15020"), "80,15020");
        assert_eq!(f(Value::from("0"), "80"), "80");
    }
}
