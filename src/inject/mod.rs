//! The injection engine: pure, synchronous and deterministic.
//!
//! It never does I/O, never reads the clock or the environment: everything it needs arrives as
//! arguments, so the same pod and the same [`Config`] always give byte-identical output. The pod
//! is handled as raw JSON from start to end (see DESIGN.md, "Lossless"): fields this crate does not
//! know survive injection, even inside a container that moves in the list.
//!
//! The pipeline follows istiod's: policy, annotation validation, strip an earlier injection,
//! render the templates and merge them in, re-apply the user's own containers, Prometheus
//! merge, probe rewrite, metadata, ordering. Then, for a pod that already carried an injection,
//! what it has is kept where the fresh injection is the same (see `reinjection`).

use serde_json::{Map, Value};

use crate::config::Config;

pub mod annotations;
pub(crate) mod context;
mod diff;
mod go_container;
pub(crate) mod images;
pub(crate) mod jobs;
mod json_view;
mod merge;
mod ordering;
mod outcome;
mod overrides;
pub(crate) mod pod;
mod policy;
pub mod prescan;
pub(crate) mod probes;
mod prometheus;
pub(crate) mod proxy_config;
pub mod quantity;
mod reinjection;
pub(crate) mod renders;
mod status;
mod workload;

pub use outcome::{Denial, InjectError, Injected, Outcome, Problem, SkipReason, Workload};
pub use policy::IGNORED_NAMESPACES;

use overrides::Overrides;

/// The annotation that picks templates for one pod.
pub const TEMPLATES_ANNOTATION: &str = "inject.istio.io/templates";

/// What the caller knows about one pod beyond the pod itself.
#[derive(Debug, Clone, Default)]
pub struct Request<'a> {
    /// The pod exactly as received (`request.object` of the AdmissionReview, or the pod template
    /// of a workload for the CLI).
    pub pod: &'a Value,
    /// `request.namespace`: used when the pod's own `metadata.namespace` is empty, as it is for
    /// pods created through a controller.
    pub namespace: Option<&'a str>,
    /// The workload that owns the pod when the caller knows it (the CLI injecting a Deployment);
    /// `None` makes the engine derive it from the pod's owner references, as istiod does.
    pub workload: Option<Workload>,
    /// Cluster-wide native-sidecar mode, already resolved by the caller (`auto` is decided by the
    /// server from the cluster's nodes). The pod annotation `sidecar.istio.io/nativeSidecar`
    /// still overrides it.
    pub native_sidecars: bool,
}

/// Injects the sidecar into `req.pod` with the given configuration snapshot.
///
/// `Ok(Outcome::Skipped)` and `Ok(Outcome::Denied)` are ordinary answers; `Err` means the
/// injector itself failed (a template that does not render, a pod that is not an object) and the
/// caller must not pretend the pod was handled.
pub fn inject(config: &Config, req: &Request<'_>) -> Result<Outcome, InjectError> {
    let original = req.pod;
    check_shape(original)?;
    let namespace = pod::metadata(original)
        .and_then(|m| m.get("namespace"))
        .and_then(Value::as_str)
        .filter(|ns| !ns.is_empty())
        .or(req.namespace)
        .unwrap_or("default");

    if let Some(reason) = policy::skip_reason(&config.injection, original, namespace) {
        return Ok(Outcome::Skipped(reason));
    }

    let annotations = pod::annotations(original);
    let mut problems = annotations::validate(annotations);
    let templates = selected_templates(config, original, &mut problems);
    if !problems.is_empty() {
        return Ok(Outcome::Denied(Denial { problems }));
    }

    let mut warnings = Vec::new();
    if let Some((kind, value)) = policy::ambiguous_inject_value(original) {
        warnings.push(format!(
            "the {kind} sidecar.istio.io/inject is {value:?}, which is neither \"true\" nor \"false\": the injection policy decided instead"
        ));
    }

    if let Some(text) = pod::annotation(original, "proxy.istio.io/config")
        && let Ok(Value::Object(map)) = crate::yaml::parse_one(text)
        && let Ok(unknown) = proxy_config::check(&map)
    {
        warnings.extend(
            unknown
                .into_iter()
                .map(|w| format!("proxy.istio.io/config: {w}")),
        );
    }

    // Everything below reads the validated annotations.
    let values = &config.values;
    let mesh_status_port = mesh_status_port(config);
    // Most pods carry no ProxyConfig of their own: the mesh default is computed once per config.
    let custom_proxy_config = pod::annotation(original, "proxy.istio.io/config");
    let proxy_config = match custom_proxy_config {
        None => std::borrow::Cow::Borrowed(&config.proxy_defaults.config),
        Some(text) => std::borrow::Cow::Owned(proxy_config::effective(&config.mesh, Some(text))),
    };
    let interception_mode = pod::annotation(original, "sidecar.istio.io/interceptionMode")
        .or_else(|| proxy_config.get("interceptionMode").and_then(Value::as_str))
        .unwrap_or("REDIRECT")
        .to_string();
    let status_port = match pod::annotation(original, "status.sidecar.istio.io/port") {
        Some(p) => p.parse().unwrap_or(0),
        None => values
            .pointer("/global/proxy/statusPort")
            .and_then(Value::as_u64)
            .and_then(|p| u16::try_from(p).ok())
            .unwrap_or(15020),
    };
    // A Job's pod: from its owner reference (webhook), or the workload being injected (CLI).
    let job = jobs::job_owner(original).or_else(|| match &req.workload {
        Some(w) if w.kind == "Job" => Some(jobs::JobOwner {
            job: w.name.clone(),
            cronjob: None,
        }),
        Some(w) if w.kind == "CronJob" => Some(jobs::JobOwner {
            job: String::new(),
            cronjob: Some(w.name.clone()),
        }),
        _ => None,
    });
    let native = match pod::annotation(original, "sidecar.istio.io/nativeSidecar") {
        Some(v) => v == "true",
        None => {
            req.native_sidecars
                || (job.is_some()
                    && values
                        .pointer("/sidecarInjectorWebhook/nativeSidecarsForJobs")
                        .and_then(Value::as_bool)
                        == Some(true))
        }
    };
    if let Some(refusal) = drain_hook_refusal(original, &proxy_config, values) {
        return Ok(Outcome::Denied(Denial {
            problems: vec![refusal],
        }));
    }
    if native && pod::annotation(original, annotations::DRAIN_URL).is_some() {
        warnings.push(format!(
            "{} has no effect with native sidecars: the kubelet already stops istio-proxy after the application has exited",
            annotations::DRAIN_URL
        ));
    }
    let hold = proxy_config
        .get("holdApplicationUntilProxyStarts")
        .and_then(Value::as_bool)
        == Some(true)
        || values
            .pointer("/global/proxy/holdApplicationUntilProxyStarts")
            .and_then(Value::as_bool)
            == Some(true);
    let revision = values
        .get("revision")
        .and_then(Value::as_str)
        .filter(|r| !r.is_empty())
        .unwrap_or("default")
        .to_string();
    let workload = req
        .workload
        .clone()
        .unwrap_or_else(|| workload::of_pod(original));

    // Start from the user's pod, minus what an earlier injection added.
    let mut p = original.clone();
    let previous = status::strip(&mut p);
    let saved = Overrides::saved(&p);
    if let Some(saved) = &saved {
        saved.reinsert(&mut p);
    }
    // A pod whose only container is istio-proxy (a gateway-style Deployment written for the
    // sidecar template) keeps the proxy a regular container: moved into initContainers it would
    // leave the pod without containers, which the API server refuses.
    let native = native
        && pod::list(&p, "containers")
            .iter()
            .any(|c| pod::name_of(c) != Some(pod::PROXY));

    let facts = context::Facts {
        namespace,
        workload: &workload,
        native_sidecar: native,
        hold_application: hold,
        proxy_config: &proxy_config,
        custom_proxy_config: custom_proxy_config.is_some(),
        status_port,
        interception_mode: &interception_mode,
        revision: &revision,
    };
    // Templates read the pod in place (see `json_view`): it is shared while they render and
    // taken back, uncopied, to merge their output in.
    let shared = std::sync::Arc::new(p);
    let ctx = context::build(config, &shared, &facts);
    let fragments = templates
        .iter()
        .map(|name| {
            config
                .renders
                .get_or_render(name, &ctx, || render(config, name, &ctx))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let templates_touched_token = ctx.token_touched();
    drop(ctx);
    let mut p =
        std::sync::Arc::try_unwrap(shared).unwrap_or_else(|still_shared| (*still_shared).clone());
    let mut added = status::Added::default();
    for fragment in &fragments {
        added.record(fragment.get("spec").and_then(Value::as_object));
    }
    // Where the proxy goes is the templates' choice, not the mode's: the sidecar template puts it
    // in initContainers in native mode, a gateway's proxy is its main container in any mode. A
    // user-written istio-proxy joins the list the rendered one is in, so that the two merge.
    let proxy_in_init = added.init_containers.iter().any(|n| n == pod::PROXY);
    if proxy_in_init {
        overrides::move_proxy_to_init_containers(&mut p);
    }
    // The user's own versions of injected containers win over the templates'.
    let user = saved.unwrap_or_else(|| Overrides::from_pod(original, &added, &previous));
    user.use_recorded_form(&mut p);
    for fragment in fragments {
        if let Value::Object(target) = &mut p {
            merge::merge_into(target, fragment);
        }
    }
    user.apply(&mut p);
    if let Some(user_proxy) = user.proxy() {
        overrides::adjust_init_user(&mut p, user_proxy, interception_mode == "TPROXY");
    }

    let has_proxy = pod::CONTAINER_LISTS.iter().any(|l| {
        pod::list(&p, l)
            .iter()
            .any(|c| pod::name_of(c) == Some(pod::PROXY))
    });
    if has_proxy {
        match prometheus::apply(&mut p, &config.mesh, mesh_status_port) {
            Ok(Some(env)) => set_proxy_env(&mut p, status::PROMETHEUS_ENV, env),
            Ok(None) => {
                // Already merged by an earlier injection: keep the user's saved settings.
                let ours = pod::annotation(&p, "prometheus.io/port")
                    == Some(mesh_status_port.to_string().as_str());
                if let Some(env) = previous.prometheus.clone().filter(|_| ours) {
                    set_proxy_env(&mut p, status::PROMETHEUS_ENV, env);
                }
            }
            Err(problem) => {
                return Ok(Outcome::Denied(Denial {
                    problems: vec![problem],
                }));
            }
        }
        let rewrite_default = values
            .pointer("/sidecarInjectorWebhook/rewriteAppHTTPProbe")
            .and_then(Value::as_bool)
            .unwrap_or(true);
        if probes::rewrite_enabled(pod::annotations(&p), rewrite_default) {
            let found =
                probes::app_probers(p.get("spec").unwrap_or(&Value::Null), mesh_status_port);
            let previous_probers = previous.probers.as_deref().filter(|_| previous.injected);
            if let Some(env) = probes::probers_env(found, previous_probers) {
                set_proxy_env(&mut p, status::PROBERS_ENV, env);
            }
            let rewrite_port = pod::annotation(&p, "status.sidecar.istio.io/port")
                .map(|s| s.parse().unwrap_or(0))
                .unwrap_or(mesh_status_port);
            if let Some(spec) = p.get_mut("spec") {
                probes::rewrite(spec, rewrite_port);
            }
        }
    }

    user.save(&mut p, &previous);
    if let Some(a) = pod::annotations_mut(&mut p) {
        a.insert(
            status::STATUS.into(),
            Value::from(added.annotation(&revision)),
        );
        for (k, v) in &config.injection.injected_annotations {
            a.insert(k.clone(), Value::from(v.as_str()));
        }
    }
    ordering::reorder(&mut p, proxy_in_init, hold);
    drop_added_empty_lists(original, &mut p);
    // What the pod already had from an earlier injection stays where it is the same.
    reinjection::keep_current(original, &mut p, &previous, &added);

    if let Some(owner) = &job
        && has_proxy
        && !proxy_in_init
    {
        warnings.push(jobs::job_warning(owner));
    }
    // The pod came in without repeats (see `policy::skip_reason`), so a repeat now is one of the
    // pod's containers in the other list from a rendered one of the same name.
    if let Some(name) = pod::repeated_container_name(&p) {
        warnings.push(format!(
            "the pod's container {name:?} has the name of a container the injection adds to the other container list; the API server rejects a pod whose container names repeat: rename the pod's container"
        ));
    }
    Ok(Outcome::Injected(Injected {
        pod: p,
        warnings,
        reinjection: previous.injected,
        templates_touched_token,
    }))
}

/// The drain hook runs a shell; a distroless proxy image has none, and a hook that cannot run
/// would fail every pod shutdown silently. Refuse it instead.
fn drain_hook_refusal(p: &Value, proxy_config: &Value, values: &Value) -> Option<Problem> {
    let url = pod::annotation(p, annotations::DRAIN_URL)?;
    let image_type = images::proxy_image_type(
        pod::annotation(p, "sidecar.istio.io/proxyImageType"),
        proxy_config,
        values,
    );
    let custom_image =
        pod::annotation(p, "sidecar.istio.io/proxyImage").filter(|i| i.contains('/'));
    let distroless = image_type == Some("distroless")
        || custom_image.is_some_and(|i| i.contains("distroless"))
        || (custom_image.is_none()
            && values
                .pointer("/global/tag")
                .and_then(Value::as_str)
                .is_some_and(|t| t.ends_with("-distroless")));
    distroless.then(|| Problem {
        annotation: annotations::DRAIN_URL.into(),
        value: url.into(),
        accepted: "the drain hook needs a shell and curl, which the distroless proxy image does not have; use the default proxy image (sidecar.istio.io/proxyImageType: default), native sidecars, or remove the annotation".into(),
    })
}

/// The RFC 6902 patch that turns `before` into `after`: a plain structural diff of the raw
/// objects, so applying it to the object the API server sent gives exactly `after`.
pub fn patch(before: &Value, after: &Value) -> json_patch::Patch {
    diff::diff(before, after)
}

/// The same patch as [`patch`], as JSON text (what the webhook sends), written without copying
/// the values it adds.
pub fn patch_json(before: &Value, after: &Value) -> Vec<u8> {
    diff::diff_json(before, after)
}

/// A word for the JSON type of a value, for error messages.
pub fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

/// The engine reads and writes these parts of the pod; anything else may hold anything.
fn check_shape(p: &Value) -> Result<(), InjectError> {
    let bad = |what: &str, v: &Value| {
        Err(InjectError::Pod(format!(
            "{what} must be {}, found {}",
            match what {
                "the pod" | "metadata" | "metadata.annotations" | "metadata.labels" | "spec" =>
                    "a mapping",
                _ => "a list",
            },
            json_kind(v)
        )))
    };
    if !p.is_object() {
        return bad("the pod", p);
    }
    for (path, what, want_object) in [
        ("/metadata", "metadata", true),
        ("/metadata/annotations", "metadata.annotations", true),
        ("/metadata/labels", "metadata.labels", true),
        ("/spec", "spec", true),
        ("/spec/containers", "spec.containers", false),
        ("/spec/initContainers", "spec.initContainers", false),
        ("/spec/volumes", "spec.volumes", false),
    ] {
        match p.pointer(path) {
            None | Some(Value::Null) => {}
            Some(v) if want_object && v.is_object() => {}
            Some(v) if !want_object && v.is_array() => {}
            Some(v) => return bad(what, v),
        }
    }
    Ok(())
}

/// The templates a pod asks for (`inject.istio.io/templates`), or the defaults.
fn selected_templates(config: &Config, p: &Value, problems: &mut Vec<Problem>) -> Vec<String> {
    let requested: Vec<&str> = match pod::annotation(p, TEMPLATES_ANNOTATION) {
        Some(list) => list
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect(),
        None => Vec::new(),
    };
    let requested = if requested.is_empty() {
        config
            .injection
            .default_templates
            .iter()
            .map(String::as_str)
            .collect()
    } else {
        requested
    };
    match config.injection.expand(requested, &config.templates) {
        Ok(names) => names.into_iter().map(str::to_string).collect(),
        Err(unknown) => {
            let mut have: Vec<String> = config.templates.names().to_vec();
            have.extend(
                config
                    .injection
                    .aliases
                    .keys()
                    .map(|a| format!("{a} (alias)")),
            );
            problems.push(Problem {
                annotation: TEMPLATES_ANNOTATION.into(),
                value: pod::annotation(p, TEMPLATES_ANNOTATION)
                    .unwrap_or("")
                    .into(),
                accepted: format!(
                    "unknown template {}; the templates that exist are: {}",
                    unknown
                        .iter()
                        .map(|u| format!("{u:?}"))
                        .collect::<Vec<_>>()
                        .join(", "),
                    have.join(", ")
                ),
            });
            Vec::new()
        }
    }
}

/// Renders one template and reads its output as a partial pod.
fn render(
    config: &Config,
    name: &str,
    ctx: &std::sync::Arc<context::Context>,
) -> Result<Map<String, Value>, InjectError> {
    let text = config
        .templates
        .render(name, &ctx.root())
        .map_err(|e| InjectError::Render {
            template: name.to_string(),
            message: render_error(&e),
        })?;
    match crate::yaml::parse_rendered(&yaml_printable(&text)) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(Value::Null) => Ok(Map::new()),
        Ok(other) => Err(InjectError::Fragment {
            template: name.to_string(),
            message: format!(
                "expected a mapping with metadata and spec, found {}",
                json_kind(&other)
            ),
        }),
        Err(e) => Err(InjectError::Fragment {
            template: name.to_string(),
            message: e.to_string(),
        }),
    }
}

/// JSON leaves some characters unescaped that YAML does not allow in a document (DEL, the C1
/// controls, U+FFFE/U+FFFF). They can only come from a value inside a JSON-escaped string, where
/// a `\u` escape reads back as the same character.
fn yaml_printable(text: &str) -> std::borrow::Cow<'_, str> {
    let bad =
        |c: char| matches!(c, '\u{7f}'..='\u{84}' | '\u{86}'..='\u{9f}' | '\u{fffe}' | '\u{ffff}');
    if !text.chars().any(bad) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if bad(c) {
            out.push_str(&format!("\\u{:04x}", c as u32));
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

fn render_error(e: &minijinja::Error) -> String {
    match e.line() {
        Some(line) => format!("line {line}: {e:#}"),
        None => e.to_string(),
    }
}

fn mesh_status_port(config: &Config) -> u16 {
    config
        .mesh
        .pointer("/defaultConfig/statusPort")
        .and_then(Value::as_u64)
        .and_then(|p| u16::try_from(p).ok())
        .unwrap_or(15020)
}

/// Sets (or replaces) an env var on `istio-proxy`, wherever it is.
fn set_proxy_env(p: &mut Value, name: &str, value: String) {
    for field in pod::CONTAINER_LISTS {
        let Some(proxy) = p
            .get_mut("spec")
            .and_then(|s| s.get_mut(field))
            .and_then(Value::as_array_mut)
            .and_then(|l| l.iter_mut().find(|c| pod::name_of(c) == Some(pod::PROXY)))
            .and_then(Value::as_object_mut)
        else {
            continue;
        };
        let env = proxy
            .entry("env")
            .or_insert_with(|| Value::Array(Vec::new()));
        if let Some(env) = env.as_array_mut() {
            let entry = serde_json::json!({"name": name, "value": value});
            match env.iter_mut().find(|e| pod::name_of(e) == Some(name)) {
                Some(existing) => *existing = entry,
                None => env.push(entry),
            }
        }
        return;
    }
}

/// Lists the injection created empty (a template's `initContainers: []`) are not written into a
/// pod that did not have them.
fn drop_added_empty_lists(original: &Value, p: &mut Value) {
    let had = |field: &str| original.get("spec").and_then(|s| s.get(field)).is_some();
    let missing: Vec<&str> = [
        "initContainers",
        "containers",
        "volumes",
        "imagePullSecrets",
    ]
    .into_iter()
    .filter(|f| !had(f))
    .collect();
    if let Some(spec) = p.get_mut("spec").and_then(Value::as_object_mut) {
        for field in missing {
            if spec
                .get(field)
                .and_then(Value::as_array)
                .is_some_and(Vec::is_empty)
            {
                spec.shift_remove(field);
            }
        }
    }
}
