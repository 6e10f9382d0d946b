//! The objects of a manifest set that the analysis reads: pod templates of workloads, and
//! Services. Everything else is ignored, as `istioctl kube-inject` passes it through.

use serde_json::Value;

use super::fields::{at, object_name, str_at, string_map};

/// A workload and its pod template.
#[derive(Debug)]
pub struct Workload<'a> {
    /// The whole object.
    pub doc: &'a Value,
    pub kind: &'a str,
    /// `Kind/namespace/name`.
    pub name: String,
    pub namespace: Option<&'a str>,
    /// The pod, or the pod template (`metadata` + `spec`).
    pub template: &'a Value,
    /// Path from the object to the template, ending in `.` (empty for a Pod).
    pub prefix: &'static str,
}

impl<'a> Workload<'a> {
    pub fn labels(&self) -> Vec<(&'a str, &'a str)> {
        string_map(at(self.template, &["metadata", "labels"]))
    }
}

#[derive(Debug)]
pub struct Service<'a> {
    pub value: &'a Value,
    pub name: String,
    pub namespace: Option<&'a str>,
}

#[derive(Debug)]
pub enum Object<'a> {
    Workload(Workload<'a>),
    /// A workload kind whose pod template is missing or not a mapping.
    NoTemplate(&'a Value),
    Service(Service<'a>),
}

/// Every workload and Service in document order, `List` items in place.
pub fn collect(docs: &[Value]) -> Vec<Object<'_>> {
    let mut out = Vec::new();
    for doc in docs {
        collect_one(doc, &mut out);
    }
    out
}

fn collect_one<'a>(doc: &'a Value, out: &mut Vec<Object<'a>>) {
    let Some(kind) = str_at(doc, &["kind"]) else {
        return;
    };
    let namespace = str_at(doc, &["metadata", "namespace"]);
    let prefix = match crate::manifest::pod_template_location(kind) {
        Some((_, prefix)) => prefix,
        None if kind == "Service" => {
            out.push(Object::Service(Service {
                value: doc,
                name: object_name(kind, doc, None),
                namespace,
            }));
            return;
        }
        None if kind.ends_with("List") => {
            if let Some(items) = doc.get("items").and_then(Value::as_array) {
                for item in items {
                    collect_one(item, out);
                }
            }
            return;
        }
        None => return,
    };
    let path: Vec<&str> = prefix.split('.').filter(|s| !s.is_empty()).collect();
    let Some(template) = at(doc, &path).filter(|t| t.is_object()) else {
        out.push(Object::NoTemplate(doc));
        return;
    };
    out.push(Object::Workload(Workload {
        doc,
        kind,
        name: object_name(kind, doc, None),
        namespace,
        template,
        prefix,
    }));
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn finds_templates_of_every_kind_and_list_items() {
        let docs = vec![
            json!({"kind": "CronJob", "metadata": {"name": "c"},
                   "spec": {"jobTemplate": {"spec": {"template": {"spec": {}}}}}}),
            json!({"kind": "List", "items": [
                {"kind": "Deployment", "metadata": {"name": "d", "namespace": "n"},
                 "spec": {"template": {"spec": {}}}},
                {"kind": "ConfigMap", "metadata": {"name": "x"}},
                {"kind": "Service", "metadata": {"name": "s"}}
            ]}),
            json!({"kind": "Job", "metadata": {"name": "no-template"}, "spec": {}}),
            json!("not an object"),
        ];
        let names: Vec<String> = collect(&docs)
            .iter()
            .map(|o| match o {
                Object::Workload(w) => format!("{} {}", w.name, w.prefix),
                Object::NoTemplate(doc) => format!("no template: {}", doc["metadata"]["name"]),
                Object::Service(s) => s.name.clone(),
            })
            .collect();
        assert_eq!(
            names,
            [
                "CronJob/c spec.jobTemplate.spec.template.",
                "Deployment/n/d spec.template.",
                "Service/s",
                "no template: \"no-template\""
            ]
        );
    }
}
