//! Why a pod is stale, in words a user acts on, built from the differences the comparison found.

use std::collections::{BTreeMap, HashSet};
use std::fmt;

use serde_json::{Value, json};

use super::compare::{Difference, Listed, Placement, Seg};
use super::selection::Selected;
use crate::inject::probes::PROBERS_ENV;

/// The broad kind of a reason, for summaries and for `-o json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Image,
    Revision,
    Changed,
    OtherInjector,
    NotInjected,
    Refused,
    NoLongerInjected,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Image => "image",
            Kind::Revision => "revision",
            Kind::Changed => "template-or-values",
            Kind::OtherInjector => "other-injector",
            Kind::NotInjected => "not-injected",
            Kind::Refused => "refused",
            Kind::NoLongerInjected => "no-longer-injected",
        }
    }
}

/// One reason a pod differs from what the injector would make of it now.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Reason {
    /// An injected container's image changed (the usual upgrade).
    Image {
        containers: Vec<String>,
        from: String,
        to: String,
    },
    /// Injected by one revision while the namespace (or pod) now selects another, or none.
    Revision {
        injected: String,
        selected: Option<Selected>,
        namespace: String,
    },
    /// The templates or values changed what is injected.
    Changed(Vec<Change>),
    /// Not this injector's injection: why we can tell, and whether the injector would refuse the
    /// pod if it were re-created.
    OtherInjector { why: String, refused: bool },
    /// Not injected although its namespace (or its labels) ask for it.
    NotInjected {
        selected: Selected,
        namespace: String,
    },
    /// The injector refuses the pod now: re-creating it would fail.
    Refused(String),
    /// Injected, but the injector would not inject it now (it opted out, a selector, ...).
    NoLongerInjected(String),
}

/// How the proxy's copy of the original probes (`ISTIO_KUBE_APP_PROBERS`) changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Probers {
    /// Written now, absent in the live pod: the rewrite is on now.
    Added,
    /// In the live pod, not written now: the rewrite is off now.
    Removed,
    Changed,
}

/// One thing the templates or values now write differently.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Change {
    /// Fields of one container that differ (`env (+A, -B, ~C)`, `resources`, `args`).
    Fields {
        container: String,
        fields: Vec<String>,
    },
    /// An injected container moves between classic and native placement.
    Placement {
        container: String,
        from: Placement,
        to: Placement,
    },
    /// The order of a container list changes (e.g. `istio-proxy` first, for hold).
    Order {
        list: String,
        from: Vec<String>,
        to: Vec<String>,
    },
    /// Containers, volumes or pull secrets added or no longer added.
    Injected {
        what: Listed,
        added: Vec<String>,
        removed: Vec<String>,
    },
    /// Application probes rewritten differently, or the rewrite switched on or off.
    Probes {
        /// Application containers whose probes or hooks the engine now rewrites.
        rewritten: Vec<String>,
        /// How the proxy's `ISTIO_KUBE_APP_PROBERS` changes, if it does.
        probers: Option<Probers>,
    },
    /// Annotations and labels the injection writes.
    Metadata {
        annotations: Vec<String>,
        labels: Vec<String>,
    },
    /// Pod spec fields a template sets.
    Spec { fields: Vec<String> },
}

impl Reason {
    pub fn kind(&self) -> Kind {
        match self {
            Reason::Image { .. } => Kind::Image,
            Reason::Revision { .. } => Kind::Revision,
            Reason::Changed(_) => Kind::Changed,
            Reason::OtherInjector { .. } => Kind::OtherInjector,
            Reason::NotInjected { .. } => Kind::NotInjected,
            Reason::Refused(_) => Kind::Refused,
            Reason::NoLongerInjected(_) => Kind::NoLongerInjected,
        }
    }

    /// Whether re-creating the pod would fail: the injector refuses it now.
    pub fn blocks_restart(&self) -> bool {
        matches!(
            self,
            Reason::Refused(_) | Reason::OtherInjector { refused: true, .. }
        )
    }

    /// `{"kind": ..., "message": ..., details}` for `-o json`.
    pub fn to_json(&self) -> Value {
        let mut v = json!({"kind": self.kind().as_str(), "message": self.to_string()});
        match self {
            Reason::Image {
                containers,
                from,
                to,
            } => {
                v["containers"] = json!(containers);
                v["from"] = json!(from);
                v["to"] = json!(to);
            }
            Reason::Revision {
                injected, selected, ..
            } => {
                v["injected"] = json!(injected);
                v["selected"] = json!(selected.as_ref().map(|s| &s.revision));
            }
            Reason::NotInjected { selected, .. } => {
                v["selected"] = json!(selected.revision);
                v["selectedBy"] = json!(selected.by);
            }
            _ => {}
        }
        v
    }
}

/// Control characters (a hostile annotation's newline or escape sequence) are written escaped,
/// and long values shortened, so a report line stays one honest line.
pub fn shown(text: &str) -> String {
    const MAX: usize = 160;
    let mut out = String::new();
    for (i, c) in text.chars().enumerate() {
        if i == MAX {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

fn list(names: &[String]) -> String {
    names
        .iter()
        .map(|n| shown(n))
        .collect::<Vec<_>>()
        .join(", ")
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Image {
                containers,
                from,
                to,
            } => {
                let what = if containers.iter().any(|c| c == "istio-proxy") {
                    "proxy image".to_string()
                } else {
                    format!("{} image", list(containers))
                };
                write!(f, "{what} {} -> {}", shown(from), shown(to))
            }
            Reason::Revision {
                injected,
                selected: Some(s),
                namespace,
            } => {
                let by = if s.by_namespace {
                    format!("namespace {} now selects", shown(namespace))
                } else {
                    "its labels now select".to_string()
                };
                write!(
                    f,
                    "injected by revision {}, {by} {} ({})",
                    shown(injected),
                    shown(&s.revision),
                    shown(&s.by)
                )
            }
            Reason::Revision {
                injected,
                selected: None,
                namespace,
            } => write!(
                f,
                "injected by revision {}, but nothing selects it for injection now (namespace {} has no injection label): re-created, it runs without a sidecar",
                shown(injected),
                shown(namespace)
            ),
            Reason::Changed(changes) => {
                f.write_str("template or values changed: ")?;
                for (i, c) in changes.iter().enumerate() {
                    if i > 0 {
                        f.write_str("; ")?;
                    }
                    write!(f, "{c}")?;
                }
                Ok(())
            }
            Reason::OtherInjector { why, .. } => write!(f, "injected by another injector: {why}"),
            Reason::NotInjected {
                selected,
                namespace,
            } => {
                let asks = if selected.by_namespace {
                    format!("its namespace {} asks for it", shown(namespace))
                } else {
                    "its labels ask for it".to_string()
                };
                write!(
                    f,
                    "not injected although {asks} ({}): created before the injector was running, or while it was down with failurePolicy Ignore",
                    shown(&selected.by)
                )
            }
            Reason::Refused(why) => write!(
                f,
                "the injector refuses this pod now, so re-creating it would fail: {}",
                shown(why)
            ),
            Reason::NoLongerInjected(why) => write!(
                f,
                "injected, but the injector would not inject it now ({}): re-created, it runs without a sidecar",
                shown(why)
            ),
        }
    }
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Change::Fields { container, fields } => {
                write!(f, "{} {}", shown(container), fields.join(", "))
            }
            Change::Placement {
                container,
                from,
                to,
            } => write!(
                f,
                "{} from {} to {}",
                shown(container),
                from.describe(),
                to.describe()
            ),
            Change::Order { list: l, from, to } => {
                let hint = match (from.first(), to.first()) {
                    (Some(a), Some(b)) if a != b && (a == "istio-proxy" || b == "istio-proxy") => {
                        " (holdApplicationUntilProxyStarts)"
                    }
                    _ => "",
                };
                write!(f, "{l} order {} -> {}{hint}", list(from), list(to))
            }
            Change::Injected {
                what,
                added,
                removed,
            } => {
                let noun = match what {
                    Listed::Container => "containers",
                    Listed::Volume => "volumes",
                    Listed::ImagePullSecret => "image pull secrets",
                };
                let mut parts = Vec::new();
                if !added.is_empty() {
                    parts.push(format!("adds {}", list(added)));
                }
                if !removed.is_empty() {
                    parts.push(format!("no longer adds {}", list(removed)));
                }
                write!(f, "injected {noun}: {}", parts.join(", "))
            }
            Change::Probes { rewritten, probers } => {
                let apps = if rewritten.is_empty() {
                    String::new()
                } else {
                    format!(" for {}", list(rewritten))
                };
                match probers {
                    Some(Probers::Added) => write!(f, "probes rewrite on now{apps}"),
                    Some(Probers::Removed) => write!(
                        f,
                        "probes rewrite off now (istio-proxy no longer gets {PROBERS_ENV}){apps}"
                    ),
                    Some(Probers::Changed) => {
                        write!(f, "probes rewrite: {PROBERS_ENV} differs{apps}")
                    }
                    None => write!(f, "probes rewrite{apps}"),
                }
            }
            Change::Metadata {
                annotations,
                labels,
            } => {
                let mut parts = Vec::new();
                if !annotations.is_empty() {
                    parts.push(format!("annotations {}", list(annotations)));
                }
                if !labels.is_empty() {
                    parts.push(format!("labels {}", list(labels)));
                }
                f.write_str(&parts.join(", "))
            }
            Change::Spec { fields } => write!(f, "pod spec {}", list(fields)),
        }
    }
}

/// What the engine writes for every pod that is missing from this one: the config's
/// `injectedAnnotations`. Only this injector writes them, so a pod without them was injected
/// by another injector (or before they were configured).
pub(crate) fn missing_marker(differences: &[Difference], markers: &[String]) -> Vec<String> {
    differences
        .iter()
        .filter_map(|d| match d {
            Difference::Field {
                path, live: None, ..
            } => match path.as_slice() {
                [Seg::Key(m), Seg::Key(a), Seg::Key(k)]
                    if m == "metadata" && a == "annotations" && markers.contains(k) =>
                {
                    Some(k.clone())
                }
                _ => None,
            },
            _ => None,
        })
        .collect()
}

fn key(seg: &Seg) -> String {
    match seg {
        Seg::Key(k) | Seg::Item(k) => k.clone(),
        Seg::Index(i) => i.to_string(),
    }
}

/// Groups the differences into reasons: images first (the common upgrade), then what else the
/// templates or values change. `injected` names the containers the injection owns.
pub fn reasons(differences: &[Difference], injected: &HashSet<String>) -> Vec<Reason> {
    // (from, to) -> containers
    let mut images: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    // container -> field -> item marks
    let mut fields: BTreeMap<String, BTreeMap<String, Marks>> = BTreeMap::new();
    let mut probes = ProbeChanges::default();
    let mut changes: Vec<Change> = Vec::new();
    let mut injected_lists: BTreeMap<Listed, (Vec<String>, Vec<String>)> = BTreeMap::new();
    let (mut annotations, mut labels, mut spec) = (Vec::new(), Vec::new(), Vec::new());
    let push = |v: &mut Vec<String>, s: String| {
        if !v.contains(&s) {
            v.push(s);
        }
    };

    for d in differences {
        match d {
            Difference::Placement {
                container,
                fresh,
                live,
            } => changes.push(Change::Placement {
                container: container.clone(),
                from: *live,
                to: *fresh,
            }),
            Difference::Order { list, fresh, live } => changes.push(Change::Order {
                list: list.clone(),
                from: live.clone(),
                to: fresh.clone(),
            }),
            Difference::Injected { what, name, added } => {
                let entry = injected_lists.entry(*what).or_default();
                if *added {
                    entry.0.push(name.clone());
                } else {
                    entry.1.push(name.clone());
                }
            }
            Difference::Field { path, fresh, live } => {
                field_difference(
                    path,
                    fresh.as_ref(),
                    live.as_ref(),
                    false,
                    injected,
                    &mut images,
                    &mut fields,
                    &mut probes,
                );
                match path.as_slice() {
                    [Seg::Key(m), Seg::Key(which), Seg::Key(k), ..] if m == "metadata" => {
                        if which == "annotations" {
                            push(&mut annotations, k.clone());
                        } else {
                            push(&mut labels, k.clone());
                        }
                    }
                    [Seg::Key(s), Seg::Key(field), rest @ ..] if s == "spec" => {
                        let name = match (field.as_str(), rest.first()) {
                            ("volumes", Some(Seg::Item(v))) => format!("volume {v}"),
                            _ => field.clone(),
                        };
                        push(&mut spec, name);
                    }
                    _ => {}
                }
            }
            Difference::Removed { path, live } => field_difference(
                path,
                None,
                live.as_ref(),
                true,
                injected,
                &mut images,
                &mut fields,
                &mut probes,
            ),
        }
    }

    let mut out: Vec<Reason> = images
        .into_iter()
        .map(|((from, to), containers)| Reason::Image {
            containers,
            from,
            to,
        })
        .collect();
    for (what, (added, removed)) in injected_lists {
        changes.push(Change::Injected {
            what,
            added,
            removed,
        });
    }
    for (container, by_field) in fields {
        let fields = by_field
            .into_iter()
            .map(|(field, marks)| {
                if marks.list.is_empty() {
                    field
                } else if marks.more > 0 {
                    format!(
                        "{field} ({}, and {} more)",
                        marks.list.join(", "),
                        marks.more
                    )
                } else {
                    format!("{field} ({})", marks.list.join(", "))
                }
            })
            .collect();
        changes.push(Change::Fields { container, fields });
    }
    if !probes.rewritten.is_empty() || probes.probers.is_some() {
        changes.push(Change::Probes {
            rewritten: probes.rewritten,
            probers: probes.probers,
        });
    }
    if !annotations.is_empty() || !labels.is_empty() {
        changes.push(Change::Metadata {
            annotations,
            labels,
        });
    }
    if !spec.is_empty() {
        changes.push(Change::Spec { fields: spec });
    }
    if !changes.is_empty() {
        out.push(Reason::Changed(changes));
    }
    out
}

/// What changed within one field (`+NAME`, `limits`), the first few of them: a pod whose
/// thousands of env vars all changed still gets a reason of one line.
#[derive(Default)]
struct Marks {
    list: Vec<String>,
    more: usize,
}

impl Marks {
    const MAX: usize = 12;

    fn add(&mut self, mark: String) {
        if self.list.contains(&mark) {
            return;
        }
        if self.list.len() < Marks::MAX {
            self.list.push(mark);
        } else {
            self.more += 1;
        }
    }
}

#[derive(Default)]
struct ProbeChanges {
    rewritten: Vec<String>,
    probers: Option<Probers>,
}

/// Sorts one field difference of a container into images, probe rewrites or changed fields.
#[allow(clippy::too_many_arguments)]
fn field_difference(
    path: &[Seg],
    fresh: Option<&Value>,
    live: Option<&Value>,
    removed: bool,
    injected: &HashSet<String>,
    images: &mut BTreeMap<(String, String), Vec<String>>,
    fields: &mut BTreeMap<String, BTreeMap<String, Marks>>,
    probes: &mut ProbeChanges,
) {
    let [Seg::Item(container), rest @ ..] = path else {
        return;
    };
    let is_injected = injected.contains(container);

    match rest {
        [] => {
            fields
                .entry(container.clone())
                .or_default()
                .entry("the whole container".into())
                .or_default();
        }
        [Seg::Key(f)] if f == "image" && is_injected && !removed => {
            let text = |v: Option<&Value>| {
                v.and_then(Value::as_str)
                    .map_or_else(|| "(none)".to_string(), str::to_string)
            };
            let entry = images.entry((text(live), text(fresh))).or_default();
            if !entry.contains(container) {
                entry.push(container.clone());
            }
        }
        [Seg::Key(f), Seg::Item(var), deeper @ ..] if f == "env" && var == PROBERS_ENV => {
            probes.probers = Some(if removed {
                Probers::Removed
            } else if live.is_none() && deeper.is_empty() {
                Probers::Added
            } else {
                Probers::Changed
            });
        }
        [Seg::Key(f), ..]
            if !is_injected
                && matches!(
                    f.as_str(),
                    "readinessProbe" | "livenessProbe" | "startupProbe" | "lifecycle"
                )
                && !probes.rewritten.contains(container) =>
        {
            probes.rewritten.push(container.clone());
        }
        [Seg::Key(f), ..]
            if !is_injected
                && matches!(
                    f.as_str(),
                    "readinessProbe" | "livenessProbe" | "startupProbe" | "lifecycle"
                ) => {}
        [Seg::Key(f), rest @ ..] => {
            let marks = fields
                .entry(container.clone())
                .or_default()
                .entry(f.clone())
                .or_default();
            if let (true, Some(Seg::Item(item))) = (
                matches!(f.as_str(), "env" | "volumeMounts" | "ports"),
                rest.first(),
            ) {
                let sign = if removed {
                    "-"
                } else if live.is_none() && rest.len() == 1 {
                    "+"
                } else {
                    "~"
                };
                marks.add(format!("{sign}{}", shown(item)));
            } else if removed && rest.is_empty() {
                marks.add("no longer set".to_string());
            } else if let (false, Some(first)) = (removed, rest.first()) {
                // e.g. resources -> limits, securityContext -> capabilities
                if f != "args" && f != "command" {
                    marks.add(key(first));
                }
            } else if removed && let Some(first) = rest.first() {
                marks.add(format!("{} no longer set", key(first)));
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reason_stays_one_short_line_however_many_fields_changed() {
        let differences: Vec<Difference> = (0..500)
            .map(|i| Difference::Removed {
                path: vec![
                    Seg::Item("istio-proxy".into()),
                    Seg::Key("env".into()),
                    Seg::Item(format!("VAR_{i}\n")),
                ],
                live: None,
            })
            .collect();
        let injected: HashSet<String> = ["istio-proxy".to_string()].into();
        let text = reasons(&differences, &injected)[0].to_string();
        assert!(text.ends_with("-VAR_11\\n, and 488 more)"), "{text}");
        assert!(text.len() < 300, "{}", text.len());
        assert!(!text.contains('\n'));
    }
}
