//! Rendered and parsed template output, reused for pods that read alike.
//!
//! Rendering Istio's template and reading its YAML back is most of an injection's cost, and a
//! rollout sends the webhook many pods that render identically: replicas share their template's
//! labels, annotations and spec. They are not byte-identical (the API server gives each one its
//! own service-account token volume name before webhooks run), so the output cannot be looked up
//! by the pod. It is looked up by what the template read instead: a template is a pure function
//! of its context, every read it makes is logged (`json_view`), and a new pod whose context
//! answers every logged read the same way renders the same output. Debug builds render anyway
//! and check that it does, so the whole test suite checks this memo.
//!
//! The memo lives in one configuration snapshot (templates, values and mesh are fixed there), so
//! a reload starts it empty.

use std::collections::{HashMap, HashSet};
use std::hash::{DefaultHasher, Hasher};
use std::sync::{Arc, Mutex};

use serde_json::{Map, Value};

use super::context::Context;
use super::json_view::{Read, Seen, Source, Step};

/// How many renders are kept. One is a few kilobytes of reads and a few tens of kilobytes of
/// parsed output; when the memo is full it starts over, which keeps it bounded without
/// bookkeeping on the hot path. 16 covers as many workloads rolling out at once; 64 held
/// about 2 MiB more under a stream of pods that are all different.
const CAPACITY: usize = 16;

/// How many shapes are kept, most recently used first. Looking a pod up hashes its context once
/// per shape, so this bounds a lookup's cost in a cluster whose pods take many paths through the
/// template; the least recently used shape goes first.
const SHAPES: usize = 8;

/// Where a read went: the document, the path, and whether the node was listed.
type Place = (Source, Vec<Step>, bool);

#[derive(Debug)]
struct Entry {
    /// What each read of the shape saw, in the shape's order.
    seen: Vec<Seen>,
    fragment: Map<String, Value>,
    /// Whether the render read or wrote the token volume's name (see [`touches_token`]).
    touches_token: bool,
}

/// Renders of one template that made the same reads in the same order (pods of one shape:
/// the same annotations present, the same branches taken), by a hash of what the reads saw.
/// Looking a pod up costs one pass over the reads per shape, however many renders are kept.
#[derive(Debug)]
struct Shape {
    template: String,
    places: Vec<Place>,
    renders: HashMap<u64, Arc<Entry>>,
}

impl Shape {
    /// The render of this shape that `ctx` answers alike, if one is kept.
    fn find(&self, ctx: &Context) -> Option<&Arc<Entry>> {
        let answers = answers(ctx, &self.places);
        let entry = self.renders.get(&fingerprint(&self.places, &answers))?;
        // The hash only narrows the search: every read is checked.
        let alike = entry
            .seen
            .iter()
            .zip(&answers)
            .all(|(seen, answer)| seen.answered_by(*answer));
        alike.then_some(entry)
    }
}

#[derive(Debug, Default)]
pub(crate) struct RenderMemo {
    shapes: Mutex<Vec<Shape>>,
    /// Renders done because nothing could be reused.
    #[cfg(test)]
    misses: std::sync::atomic::AtomicUsize,
}

impl RenderMemo {
    /// The output of template `name` for `ctx`: reused when an earlier render read alike, else
    /// `render()` (which renders with `ctx` and parses), remembered.
    pub(crate) fn get_or_render<E>(
        &self,
        name: &str,
        ctx: &Context,
        render: impl Fn() -> Result<Map<String, Value>, E>,
    ) -> Result<Map<String, Value>, E> {
        if let Some(hit) = self.find(name, ctx) {
            #[cfg(debug_assertions)]
            check_reuse(name, ctx, &hit, &render);
            if hit.touches_token {
                ctx.note_token_touched();
            }
            return Ok(hit.fragment.clone());
        }
        // Reads logged before this render (a failed render may leave some) must not count.
        let _ = ctx.take_reads();
        #[cfg(test)]
        self.misses
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let fragment = render()?;
        let reads = ctx.take_reads();
        let touches = reads
            .as_deref()
            .is_none_or(|reads| touches_token(reads, &fragment));
        if touches {
            ctx.note_token_touched();
        }
        if let Some((places, seen)) = reads.and_then(distinct) {
            self.remember(name, ctx, places, seen, &fragment, touches);
        }
        Ok(fragment)
    }

    fn find(&self, name: &str, ctx: &Context) -> Option<Arc<Entry>> {
        let mut shapes = self.shapes.lock().ok()?;
        let (at, entry) = shapes
            .iter()
            .enumerate()
            .filter(|(_, s)| s.template == name)
            .find_map(|(at, s)| Some((at, Arc::clone(s.find(ctx)?))))?;
        shapes[..=at].rotate_right(1);
        Some(entry)
    }

    fn remember(
        &self,
        name: &str,
        ctx: &Context,
        places: Vec<Place>,
        seen: Vec<Seen>,
        fragment: &Map<String, Value>,
        touches_token: bool,
    ) {
        let hash = fingerprint(&places, &answers(ctx, &places));
        let entry = Arc::new(Entry {
            seen,
            fragment: fragment.clone(),
            touches_token,
        });
        // A poisoned lock only means another thread panicked while holding it: skip the memo.
        let Ok(mut shapes) = self.shapes.lock() else {
            return;
        };
        if shapes.iter().map(|s| s.renders.len()).sum::<usize>() >= CAPACITY {
            shapes.clear();
        }
        match shapes
            .iter_mut()
            .find(|s| s.template == name && s.places == places)
        {
            Some(shape) => {
                shape.renders.insert(hash, entry);
            }
            None => {
                shapes.truncate(SHAPES - 1);
                shapes.insert(
                    0,
                    Shape {
                        template: name.to_string(),
                        places,
                        renders: HashMap::from([(hash, entry)]),
                    },
                );
            }
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.shapes
            .lock()
            .map(|s| s.iter().map(|s| s.renders.len()).sum())
            .unwrap_or(0)
    }
}

/// Whether a render read a string or a key holding the service-account token volume's prefix
/// (`kube-api-access-`), listed the whole context, or wrote such a string or key. A render that
/// did none of these cannot depend on the token volume's name, nor put it in the pod: what the
/// replica memo (`crate::replicas`) needs to answer replicas by construction.
fn touches_token(reads: &[Read], fragment: &Map<String, Value>) -> bool {
    let holds = |s: &str| s.contains(crate::replicas::TOKEN_VOLUME_PREFIX);
    let read = reads.iter().any(|r| match &r.seen {
        Seen::Scalar(Value::String(s)) => holds(s),
        Seen::Keys(keys) => keys.iter().any(|k| holds(k)),
        Seen::Unrepeatable => true,
        _ => false,
    });
    fn writes(value: &Value, holds: &dyn Fn(&str) -> bool) -> bool {
        match value {
            Value::String(s) => holds(s),
            Value::Array(items) => items.iter().any(|v| writes(v, holds)),
            Value::Object(map) => map.iter().any(|(k, v)| holds(k) || writes(v, holds)),
            _ => false,
        }
    }
    read || fragment.iter().any(|(k, v)| holds(k) || writes(v, &holds))
}

fn is_listing(seen: &Seen) -> bool {
    matches!(seen, Seen::Keys(_) | Seen::Len(_))
}

/// What `ctx` answers at each place (see `Context::node`), found once for both the hash and
/// the check.
fn answers<'a>(ctx: &'a Context, places: &[Place]) -> Vec<Option<Option<&'a Value>>> {
    places
        .iter()
        .map(|(source, path, _)| ctx.node(*source, path))
        .collect()
}

/// A hash of the answers at these places; equal answers give equal hashes.
fn fingerprint(places: &[Place], answers: &[Option<Option<&Value>>]) -> u64 {
    let mut h = DefaultHasher::new();
    for ((_, _, listing), answer) in places.iter().zip(answers) {
        match answer {
            None => h.write_u8(0),
            Some(None) => h.write_u8(1),
            Some(Some(Value::Object(m))) if *listing => {
                h.write_u8(2);
                for k in m.keys() {
                    h.write(k.as_bytes());
                    h.write_u8(0xff);
                }
            }
            Some(Some(Value::Array(a))) if *listing => {
                h.write_u8(3);
                h.write_usize(a.len());
            }
            Some(Some(Value::Object(_))) => h.write_u8(4),
            Some(Some(Value::Array(_))) => h.write_u8(5),
            Some(Some(Value::String(text))) => {
                h.write_u8(6);
                h.write(text.as_bytes());
            }
            Some(Some(other)) => {
                h.write_u8(7);
                h.write(other.to_string().as_bytes());
            }
        }
    }
    h.finish()
}

/// The reads without repeats (a template asks for the same annotation many times), in first-read
/// order, split into places and what was seen there; `None` when the render cannot be reused.
fn distinct(reads: Vec<Read>) -> Option<(Vec<Place>, Vec<Seen>)> {
    if reads.iter().any(|r| r.seen == Seen::Unrepeatable) {
        return None;
    }
    let keep: Vec<bool> = {
        let mut first = HashSet::with_capacity(reads.len());
        reads
            .iter()
            .map(|r| first.insert((r.source, r.path.as_slice(), is_listing(&r.seen))))
            .collect()
    };
    let (places, seen) = reads
        .into_iter()
        .zip(keep)
        .filter(|(_, keep)| *keep)
        .map(|(r, _)| {
            let listing = is_listing(&r.seen);
            ((r.source, r.path, listing), r.seen)
        })
        .unzip();
    Some((places, seen))
}

/// Renders again and checks that the reused output is what rendering gives.
#[cfg(debug_assertions)]
fn check_reuse<E>(
    name: &str,
    ctx: &Context,
    hit: &Entry,
    render: &impl Fn() -> Result<Map<String, Value>, E>,
) {
    let fresh = render();
    let _ = ctx.take_reads();
    match fresh {
        Ok(fresh) => assert!(
            fresh == hit.fragment,
            "template {name:?}: reused output differs from a fresh render\nreused: {:?}\nfresh:  {:?}",
            hit.fragment,
            fresh
        ),
        Err(_) => panic!("template {name:?}: reused output for a context that fails to render"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, Sources};
    use crate::inject::{Outcome, Request, inject};
    use serde_json::json;

    fn config(template: &str) -> Config {
        let mut sources = Sources::embedded();
        sources.config = format!(
            "templates:\n  t: |\n{}\ndefaultTemplates: [t]\npolicy: enabled\n",
            template
                .lines()
                .map(|l| format!("    {l}"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        Config::from_sources(&sources).unwrap()
    }

    fn injected(config: &Config, pod: &Value) -> Value {
        let req = Request {
            pod,
            namespace: Some("ns"),
            workload: None,
            native_sidecars: false,
        };
        match inject(config, &req).unwrap() {
            Outcome::Injected(out) => out.pod,
            other => panic!("{other:?}"),
        }
    }

    fn pod(label: &str, volume: &str, grace: Value) -> Value {
        json!({"metadata": {"labels": {"app": label}},
            "spec": {"terminationGracePeriodSeconds": grace,
                "containers": [{"name": "app", "image": "app"}],
                "volumes": [{"name": volume, "emptyDir": {}}]}})
    }

    #[test]
    fn pods_that_read_alike_share_a_render_and_others_do_not() {
        let config = config(
            "metadata:\n  labels:\n    x: {{ metadata.labels.app }}\nspec:\n  containers:\n  - name: c\n    image: {{ spec.terminationGracePeriodSeconds | string }}\n",
        );
        let memo = &config.renders;
        let first = injected(&config, &pod("a", "v1", json!(30)));
        assert_eq!(memo.len(), 1);
        // Only the volume differs, which the template never reads: reused.
        let replica = injected(&config, &pod("a", "v2", json!(30)));
        assert_eq!(memo.len(), 1);
        assert_eq!(first["spec"]["containers"], replica["spec"]["containers"]);
        // What it reads differs: rendered anew, including 30 against 30.0.
        for other in [pod("b", "v1", json!(30)), pod("a", "v1", json!(30.0))] {
            let before = memo.len();
            let out = injected(&config, &other);
            assert_eq!(memo.len(), before + 1);
            assert_eq!(
                out["metadata"]["labels"]["x"],
                other["metadata"]["labels"]["app"]
            );
        }
    }

    #[test]
    fn listing_a_mapping_depends_on_its_keys_not_on_unread_values() {
        let config = config(
            "metadata:\n  annotations:\n    keys: {{ metadata.labels | list | join(',') }}\n",
        );
        let with = |labels: Value| {
            json!({"metadata": {"labels": labels},
            "spec": {"containers": [{"name": "app", "image": "app"}]}})
        };
        injected(&config, &with(json!({"a": "1", "b": "2"})));
        injected(&config, &with(json!({"a": "9", "b": "9"})));
        assert_eq!(config.renders.len(), 1);
        let out = injected(&config, &with(json!({"b": "1", "a": "2"})));
        assert_eq!(config.renders.len(), 2);
        assert_eq!(out["metadata"]["annotations"]["keys"], "b,a");
    }

    #[test]
    fn a_name_the_config_answers_is_not_taken_for_one_the_pod_overrides() {
        let config = config(
            "metadata:\n  annotations:\n    hold: {{ proxy_config.holdApplicationUntilProxyStarts | string }}\n",
        );
        let plain = pod("a", "v", json!(1));
        let mut custom = plain.clone();
        custom["metadata"]["annotations"] =
            json!({"proxy.istio.io/config": "holdApplicationUntilProxyStarts: true"});
        let first = injected(&config, &plain);
        let second = injected(&config, &custom);
        assert_eq!(config.renders.len(), 2);
        assert_ne!(
            first["metadata"]["annotations"]["hold"],
            second["metadata"]["annotations"]["hold"]
        );
        // And back: the plain pod reuses its own render, not the custom one.
        assert_eq!(injected(&config, &plain), first);
        assert_eq!(config.renders.len(), 2);
    }

    #[test]
    fn a_render_that_lists_the_whole_context_is_not_reused() {
        let config = config("metadata:\n  annotations:\n    n: {{ debug() | length | string }}\n");
        injected(&config, &pod("a", "v", json!(1)));
        assert_eq!(config.renders.len(), 0);
    }

    #[test]
    fn shapes_are_bounded_and_the_latest_used_is_kept() {
        // The template reads every annotation: each pod below has one more, so each reads
        // one more place, a shape of its own.
        let config = config(
            "metadata:\n  labels:\n{% for k in metadata.annotations %}    {{ k }}: {{ metadata.annotations[k] }}\n{% endfor %}    x: \"1\"\n",
        );
        let shaped = |n: usize| {
            let annotations: Map<String, Value> =
                (0..n).map(|i| (format!("a{i}"), json!("v"))).collect();
            json!({"metadata": {"annotations": annotations},
                "spec": {"containers": [{"name": "app", "image": "app"}]}})
        };
        injected(&config, &shaped(0));
        for n in 1..12 {
            injected(&config, &shaped(n));
            // The first one stays in use, so it stays in the memo.
            injected(&config, &shaped(0));
        }
        let misses = || {
            config
                .renders
                .misses
                .load(std::sync::atomic::Ordering::Relaxed)
        };
        // Pod 0 was rendered once; every later one of it was reused.
        assert_eq!(misses(), 12);
        let shapes = config.renders.shapes.lock().unwrap();
        assert_eq!(shapes.len(), SHAPES);
        assert_eq!(
            shapes.iter().map(|s| s.renders.len()).sum::<usize>(),
            SHAPES
        );
    }

    #[test]
    fn the_memo_is_bounded() {
        let config = config("metadata:\n  labels:\n    x: {{ metadata.labels.app }}\n");
        for i in 0..CAPACITY + 10 {
            injected(&config, &pod(&format!("a{i}"), "v", json!(1)));
        }
        let kept = config.renders.len();
        assert!(kept > 0 && kept <= CAPACITY, "{kept}");
    }
}
