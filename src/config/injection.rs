//! The `config` key: injection policy, templates, aliases, selectors and injected annotations.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::{Map, Value};

use super::{ConfigError, Templates};

/// The parsed `config` key.
#[derive(Debug, Clone)]
pub struct Injection {
    pub policy: Policy,
    /// Templates rendered when a pod does not choose with `inject.istio.io/templates`.
    pub default_templates: Vec<String>,
    /// Template name -> template text, in the order they were written.
    pub templates: Vec<(String, String)>,
    /// Alias -> template names (one level, as istiod: aliases are not recursive).
    pub aliases: BTreeMap<String, Vec<String>>,
    pub never_inject_selector: Vec<LabelSelector>,
    pub always_inject_selector: Vec<LabelSelector>,
    /// Annotations written on every injected pod.
    pub injected_annotations: BTreeMap<String, String>,
    pub findings: Findings,
}

/// Whether pods are injected unless they opt out, or only when they opt in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    Enabled,
    Disabled,
}

/// Switches for the guardrail findings sent back as admission warnings.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Findings {
    #[serde(default)]
    pub disabled: Vec<String>,
}

/// The `config` key as written. Unknown keys are ignored, as istiod ignores them (its chart
/// still writes a legacy `template:` key).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct File {
    #[serde(default)]
    policy: Option<String>,
    #[serde(default)]
    default_templates: Option<Vec<String>>,
    #[serde(default)]
    templates: Option<serde_yaml_ng::Mapping>,
    #[serde(default)]
    aliases: Option<BTreeMap<String, Vec<String>>>,
    #[serde(default)]
    never_inject_selector: Option<Vec<Value>>,
    #[serde(default)]
    always_inject_selector: Option<Vec<Value>>,
    #[serde(default)]
    injected_annotations: Option<BTreeMap<String, String>>,
    #[serde(default)]
    findings: Option<Findings>,
}

fn invalid(line: Option<usize>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: "config".into(),
        line,
        message: message.into(),
    }
}

impl Injection {
    /// Parses and checks the `config` key (templates are compiled separately).
    pub fn parse(text: &str) -> Result<Injection, ConfigError> {
        let file: File = serde_yaml_ng::from_str(text).map_err(|e| {
            let message = e.to_string();
            let message = match message.find(" at line ") {
                Some(i) => message[..i].to_string(),
                None => message,
            };
            invalid(e.location().map(|l| l.line()), message)
        })?;

        let policy = match file.policy.as_deref() {
            None | Some("enabled") => Policy::Enabled,
            Some("disabled") => Policy::Disabled,
            Some(other) => {
                return Err(invalid(
                    None,
                    format!("unknown policy {other:?}; accepted: enabled, disabled"),
                ));
            }
        };

        let mut templates = Vec::new();
        for (name, text) in file.templates.unwrap_or_default() {
            let (Some(name), Some(text)) = (name.as_str(), text.as_str()) else {
                return Err(invalid(
                    None,
                    "templates must map template names to template text",
                ));
            };
            templates.push((name.to_string(), text.to_string()));
        }
        if templates.is_empty() {
            return Err(invalid(
                None,
                "no templates: `templates` must name at least one template (the default is `sidecar`)",
            ));
        }

        let selectors = |list: Option<Vec<Value>>, field: &str| {
            list.unwrap_or_default()
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    LabelSelector::parse(v).map_err(|m| invalid(None, format!("{field}[{i}]: {m}")))
                })
                .collect::<Result<Vec<_>, _>>()
        };

        Ok(Injection {
            policy,
            default_templates: file
                .default_templates
                .filter(|t| !t.is_empty())
                .unwrap_or_else(|| vec!["sidecar".to_string()]),
            templates,
            aliases: file.aliases.unwrap_or_default(),
            never_inject_selector: selectors(file.never_inject_selector, "neverInjectSelector")?,
            always_inject_selector: selectors(file.always_inject_selector, "alwaysInjectSelector")?,
            injected_annotations: file.injected_annotations.unwrap_or_default(),
            findings: file.findings.unwrap_or_default(),
        })
    }

    /// Every name in `defaultTemplates` and in the aliases must be a template that exists.
    pub(crate) fn check_template_names(&self, templates: &Templates) -> Result<(), ConfigError> {
        let known = |name: &str| templates.contains(name);
        for name in &self.default_templates {
            if !known(name) && !self.aliases.contains_key(name) {
                return Err(invalid(
                    None,
                    format!(
                        "defaultTemplates names {name:?}, which is neither a template nor an alias; templates: {}",
                        templates.names().join(", ")
                    ),
                ));
            }
        }
        for (alias, names) in &self.aliases {
            for name in names {
                if !known(name) {
                    return Err(invalid(
                        None,
                        format!(
                            "alias {alias:?} names the unknown template {name:?}; templates: {}",
                            templates.names().join(", ")
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Expands a list of template names and aliases (as `inject.istio.io/templates` holds) into
    /// template names, in order. Returns the unknown names as the error.
    pub fn expand<'a>(
        &'a self,
        requested: impl IntoIterator<Item = &'a str>,
        templates: &Templates,
    ) -> Result<Vec<&'a str>, Vec<String>> {
        let mut out = Vec::new();
        let mut unknown = Vec::new();
        for name in requested {
            if let Some(names) = self.aliases.get(name) {
                out.extend(names.iter().map(String::as_str));
            } else if templates.contains(name) {
                out.push(name);
            } else {
                unknown.push(name.to_string());
            }
        }
        if unknown.is_empty() {
            Ok(out)
        } else {
            Err(unknown)
        }
    }
}

/// A Kubernetes LabelSelector (`matchLabels` and `matchExpressions`), matched against pod labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelSelector {
    match_labels: Vec<(String, String)>,
    match_expressions: Vec<Requirement>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Requirement {
    key: String,
    op: Operator,
    values: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Operator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

impl LabelSelector {
    fn parse(value: &Value) -> Result<LabelSelector, String> {
        let obj = value
            .as_object()
            .ok_or("a selector must be a mapping with matchLabels and/or matchExpressions")?;
        let mut selector = LabelSelector {
            match_labels: Vec::new(),
            match_expressions: Vec::new(),
        };
        for key in obj.keys() {
            if key != "matchLabels" && key != "matchExpressions" {
                return Err(format!(
                    "unknown field {key:?}; accepted: matchLabels, matchExpressions"
                ));
            }
        }
        if let Some(labels) = obj.get("matchLabels") {
            let labels = labels.as_object().ok_or("matchLabels must be a mapping")?;
            for (k, v) in labels {
                let v = v.as_str().ok_or("matchLabels values must be strings")?;
                selector.match_labels.push((k.clone(), v.to_string()));
            }
        }
        if let Some(exprs) = obj.get("matchExpressions") {
            let exprs = exprs.as_array().ok_or("matchExpressions must be a list")?;
            for e in exprs {
                selector.match_expressions.push(Requirement::parse(e)?);
            }
        }
        Ok(selector)
    }

    /// Whether `labels` satisfy every requirement. An empty selector matches nothing, as istiod
    /// skips empty selectors.
    pub fn matches(&self, labels: Option<&Map<String, Value>>) -> bool {
        if self.match_labels.is_empty() && self.match_expressions.is_empty() {
            return false;
        }
        let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        self.match_labels
            .iter()
            .all(|(k, v)| get(k) == Some(v.as_str()))
            && self.match_expressions.iter().all(|r| {
                let value = get(&r.key);
                match r.op {
                    Operator::In => value.is_some_and(|v| r.values.iter().any(|x| x == v)),
                    Operator::NotIn => value.is_none_or(|v| !r.values.iter().any(|x| x == v)),
                    Operator::Exists => value.is_some(),
                    Operator::DoesNotExist => value.is_none(),
                }
            })
    }
}

impl Requirement {
    fn parse(value: &Value) -> Result<Requirement, String> {
        let key = value
            .get("key")
            .and_then(Value::as_str)
            .ok_or("each matchExpressions entry needs a string `key`")?;
        let op = match value.get("operator").and_then(Value::as_str) {
            Some("In") => Operator::In,
            Some("NotIn") => Operator::NotIn,
            Some("Exists") => Operator::Exists,
            Some("DoesNotExist") => Operator::DoesNotExist,
            other => {
                return Err(format!(
                    "operator {other:?} of key {key:?}; accepted: In, NotIn, Exists, DoesNotExist"
                ));
            }
        };
        let values: Vec<String> = match value.get("values") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| v.as_str().map(str::to_string))
                .collect::<Option<_>>()
                .ok_or_else(|| format!("values of key {key:?} must be strings"))?,
            Some(_) => return Err(format!("values of key {key:?} must be a list")),
        };
        let needs_values = matches!(op, Operator::In | Operator::NotIn);
        if needs_values == values.is_empty() {
            return Err(format!(
                "key {key:?}: In and NotIn need values, Exists and DoesNotExist take none"
            ));
        }
        Ok(Requirement {
            key: key.to_string(),
            op,
            values,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(text: &str) -> Result<Injection, String> {
        Injection::parse(text).map_err(|e| e.to_string())
    }

    #[test]
    fn unknown_policy_is_rejected_with_the_accepted_values() {
        let err = parse("policy: maybe\ntemplates: {sidecar: x}").unwrap_err();
        assert!(
            err.contains("unknown policy \"maybe\"; accepted: enabled, disabled"),
            "{err}"
        );
    }

    #[test]
    fn yaml_errors_carry_the_line() {
        let err = parse("policy: enabled\ntemplates:\n  sidecar: [\n").unwrap_err();
        assert!(err.starts_with("invalid `config` at line"), "{err}");
    }

    #[test]
    fn missing_templates_is_an_error() {
        let err = parse("policy: enabled").unwrap_err();
        assert!(err.contains("no templates"), "{err}");
    }

    #[test]
    fn selectors_match_labels_and_expressions() {
        let inj = parse(
            "templates: {sidecar: x}\nneverInjectSelector:\n- matchLabels: {a: b}\n- matchExpressions:\n  - {key: tier, operator: In, values: [db, cache]}\n  - {key: canary, operator: DoesNotExist}\n",
        )
        .unwrap();
        let labels = |v: Value| v.as_object().cloned();
        let [by_label, by_expr] = &inj.never_inject_selector[..] else {
            panic!("two selectors expected");
        };
        assert!(by_label.matches(labels(json!({"a": "b", "x": "y"})).as_ref()));
        assert!(!by_label.matches(labels(json!({"a": "c"})).as_ref()));
        assert!(!by_label.matches(None));
        assert!(by_expr.matches(labels(json!({"tier": "db"})).as_ref()));
        assert!(!by_expr.matches(labels(json!({"tier": "db", "canary": "1"})).as_ref()));
        assert!(!by_expr.matches(labels(json!({"tier": "web"})).as_ref()));
    }

    #[test]
    fn bad_selectors_say_what_is_accepted() {
        let err = parse(
            "templates: {sidecar: x}\nalwaysInjectSelector:\n- matchExpressions: [{key: a, operator: Equals, values: [b]}]\n",
        )
        .unwrap_err();
        assert!(err.contains("alwaysInjectSelector[0]"), "{err}");
        assert!(
            err.contains("accepted: In, NotIn, Exists, DoesNotExist"),
            "{err}"
        );
    }

    #[test]
    fn empty_selector_matches_nothing() {
        let inj = parse("templates: {sidecar: x}\nneverInjectSelector: [{}]").unwrap();
        assert!(!inj.never_inject_selector[0].matches(json!({"a": "b"}).as_object()));
    }
}
