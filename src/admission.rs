//! AdmissionReview in, AdmissionResponse out; nothing else.
//!
//! The review is read as raw JSON and `request.object` is handed to the engine untouched, so a
//! field that k8s-openapi does not know survives injection (DESIGN.md, "Lossless"). The response
//! echoes the request's `apiVersion` and `request.uid`, as the API server requires.

use std::panic::{AssertUnwindSafe, catch_unwind};

use base64::Engine as _;
use serde_json::{Map, Value, json};

use crate::analyze::{self, PodContext};
use crate::config::Config;
use crate::inject::{self, Denial, InjectError, Outcome, Request, SkipReason};

/// The AdmissionReview versions the API server may send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiVersion {
    V1,
    V1Beta1,
}

impl ApiVersion {
    pub fn as_str(self) -> &'static str {
        match self {
            ApiVersion::V1 => "admission.k8s.io/v1",
            ApiVersion::V1Beta1 => "admission.k8s.io/v1beta1",
        }
    }

    fn parse(s: &str) -> Option<ApiVersion> {
        match s {
            "admission.k8s.io/v1" => Some(ApiVersion::V1),
            "admission.k8s.io/v1beta1" => Some(ApiVersion::V1Beta1),
            _ => None,
        }
    }
}

/// Why a body is not an AdmissionReview we can answer. Every variant is the caller's fault
/// (HTTP 400).
#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    #[error("the body is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("the body is not a JSON object")]
    NotAnObject,
    #[error(
        "`apiVersion` {0:?} is not supported; accepted: admission.k8s.io/v1, admission.k8s.io/v1beta1"
    )]
    ApiVersion(String),
    #[error("`kind` {0:?} is not AdmissionReview")]
    Kind(String),
    #[error("the review has no `request` object")]
    MissingRequest,
    #[error("`request.uid` is missing, empty or not a string")]
    MissingUid,
}

/// One decoded review: the parts we act on, plus the raw object.
#[derive(Debug, Clone)]
pub struct Review {
    pub api_version: ApiVersion,
    pub uid: String,
    /// `request.kind.group` and `request.kind.kind` (`""`, `Pod` for what we inject).
    pub group: String,
    pub kind: String,
    /// `CREATE`, `UPDATE`, ...
    pub operation: String,
    pub namespace: Option<String>,
    /// `request.name`; empty for pods whose name the API server generates.
    pub name: Option<String>,
    pub dry_run: bool,
    /// `request.object` exactly as sent (`None` when absent or null, as for DELETE).
    pub object: Option<Value>,
}

impl Review {
    /// Decodes a review from the raw request body.
    pub fn from_slice(body: &[u8]) -> Result<Review, ReviewError> {
        let value = crate::value::from_slice(body)?;
        let Value::Object(mut top) = value else {
            return Err(ReviewError::NotAnObject);
        };
        let version = str_field(&top, "apiVersion").unwrap_or_default();
        let api_version = ApiVersion::parse(version)
            .ok_or_else(|| ReviewError::ApiVersion(version.to_owned()))?;
        match str_field(&top, "kind") {
            Some("AdmissionReview") => {}
            other => return Err(ReviewError::Kind(other.unwrap_or_default().to_owned())),
        }
        let Some(Value::Object(mut request)) = top.shift_remove("request") else {
            return Err(ReviewError::MissingRequest);
        };
        let uid = match str_field(&request, "uid") {
            Some(uid) if !uid.is_empty() => uid.to_owned(),
            _ => return Err(ReviewError::MissingUid),
        };
        let kind = request.get("kind");
        let group = kind
            .and_then(|k| k.get("group"))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let kind = kind
            .and_then(|k| k.get("kind"))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let non_empty = |s: Option<&str>| s.filter(|s| !s.is_empty()).map(str::to_owned);
        let operation = str_field(&request, "operation")
            .unwrap_or_default()
            .to_owned();
        let namespace = non_empty(str_field(&request, "namespace"));
        let name = non_empty(str_field(&request, "name"));
        let dry_run = request
            .get("dryRun")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let object = match request.shift_remove("object") {
            None | Some(Value::Null) => None,
            Some(object) => Some(object),
        };
        Ok(Review {
            api_version,
            uid,
            group,
            kind,
            operation,
            namespace,
            name,
            dry_run,
            object,
        })
    }

    /// The pod's name for logs: `request.name`, else `metadata.name`, else `generateName`.
    pub fn display_name(&self) -> String {
        let meta = self.object.as_ref().and_then(|o| o.get("metadata"));
        let field = |key: &str| meta.and_then(|m| m.get(key)).and_then(Value::as_str);
        display_name(self.name.as_deref(), field("name"), field("generateName"))
    }
}

/// The parts of a pod CREATE review that the server needs without the pod itself: who to answer
/// (`uid`, `apiVersion`), what to log, the node (for the native-sidecar mode) and the token
/// volume's name (what replicas differ in, see `replicas`). Read without building the pod as a
/// value; a replayed answer needs nothing more.
///
/// This is a shortcut, never the authority: `None` for anything that is not a plain pod CREATE
/// or that reads unusually (a field of another type, a key twice in a place it reads), and the
/// full [`Review::from_slice`] then reads the body and gives any error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub api_version: ApiVersion,
    pub uid: String,
    pub namespace: Option<String>,
    pub dry_run: bool,
    /// As [`Review::display_name`].
    pub display_name: String,
    /// `spec.nodeName`, when set and not empty.
    pub node_name: Option<String>,
    /// The first volume whose name starts with `kube-api-access-`.
    pub token_volume: Option<String>,
    /// Where the uid's text lies in the body (without its quotes), when it is written without
    /// escapes: what the replica memo masks.
    pub uid_span: Option<std::ops::Range<usize>>,
}

impl Head {
    pub fn from_slice(body: &[u8]) -> Option<Head> {
        #[derive(serde::Deserialize)]
        struct Envelope<'a> {
            #[serde(rename = "apiVersion")]
            api_version: String,
            kind: String,
            #[serde(borrow)]
            request: Request<'a>,
        }
        #[derive(serde::Deserialize)]
        struct Request<'a> {
            #[serde(borrow)]
            uid: &'a serde_json::value::RawValue,
            kind: Kind,
            operation: String,
            namespace: Option<String>,
            name: Option<String>,
            #[serde(rename = "dryRun")]
            dry_run: Option<bool>,
            object: Object,
        }
        #[derive(serde::Deserialize)]
        struct Kind {
            #[serde(default)]
            group: Option<String>,
            kind: String,
        }
        #[derive(serde::Deserialize)]
        struct Object {
            metadata: Option<Metadata>,
            spec: Option<Spec>,
        }
        #[derive(serde::Deserialize)]
        struct Metadata {
            name: Option<String>,
            #[serde(rename = "generateName")]
            generate_name: Option<String>,
        }
        #[derive(serde::Deserialize)]
        struct Spec {
            #[serde(rename = "nodeName")]
            node_name: Option<String>,
            volumes: Option<Vec<Volume>>,
        }
        #[derive(serde::Deserialize)]
        struct Volume {
            name: Option<String>,
        }

        // The head skips most of the body, and serde_json does not check what it skips as
        // closely as what it reads: text that is not UTF-8, and `\u` escapes of surrogates
        // (which may pair up or not). Such bodies have no head; the full read decides.
        let text = std::str::from_utf8(body).ok()?;
        let surrogate_escape = memchr::memmem::find_iter(body, b"\\u").any(|at| {
            matches!(body.get(at + 2), Some(b'd' | b'D'))
                && matches!(
                    body.get(at + 3),
                    Some(b'8'..=b'9' | b'a'..=b'f' | b'A'..=b'F')
                )
        });
        if surrogate_escape {
            return None;
        }
        let envelope: Envelope = serde_json::from_str(text).ok()?;
        let request = envelope.request;
        let raw_uid = request.uid.get();
        let uid: String = serde_json::from_str(raw_uid).ok()?;
        let plain_pod_create = envelope.kind == "AdmissionReview"
            && request.kind.group.as_deref().unwrap_or_default().is_empty()
            && request.kind.kind == "Pod"
            && request.operation == "CREATE"
            && !uid.is_empty();
        if !plain_pod_create {
            return None;
        }
        let non_empty = |s: Option<String>| s.filter(|s| !s.is_empty());
        let metadata = request.object.metadata;
        let spec = request.object.spec;
        let name = non_empty(request.name);
        let display_name = display_name(
            name.as_deref(),
            metadata.as_ref().and_then(|m| m.name.as_deref()),
            metadata.as_ref().and_then(|m| m.generate_name.as_deref()),
        );
        // The raw text points into `text`; unescaped, it is the uid in quotes.
        let uid_span = (raw_uid.len() == uid.len() + 2).then(|| {
            let start = raw_uid.as_ptr() as usize - text.as_ptr() as usize + 1;
            start..start + uid.len()
        });
        Some(Head {
            api_version: ApiVersion::parse(&envelope.api_version)?,
            uid,
            uid_span,
            namespace: non_empty(request.namespace),
            dry_run: request.dry_run.unwrap_or(false),
            display_name,
            node_name: non_empty(spec.as_ref().and_then(|s| s.node_name.clone())),
            token_volume: spec
                .and_then(|s| s.volumes)
                .into_iter()
                .flatten()
                .filter_map(|v| v.name)
                .find(|n| n.starts_with(crate::replicas::TOKEN_VOLUME_PREFIX)),
        })
    }
}

/// The pod's name for logs: `request.name`, else `metadata.name`, else `generateName*`.
fn display_name(request: Option<&str>, name: Option<&str>, generate: Option<&str>) -> String {
    if let Some(name) = request {
        return name.to_owned();
    }
    match (name, generate) {
        (Some(name), _) if !name.is_empty() => name.to_owned(),
        (_, Some(prefix)) => format!("{prefix}*"),
        _ => String::new(),
    }
}

fn str_field<'a>(map: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
    map.get(key).and_then(Value::as_str)
}

/// Why a pod is admitted unchanged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pass {
    /// The engine decided not to inject.
    Skipped(SkipReason),
    /// The review is not a pod CREATE (the webhook rules should not send these; we let them
    /// through rather than inject into something that is not a new pod).
    NotPodCreate { kind: String, operation: String },
    /// The review carries no object.
    NoObject,
    /// The pod already carried an injection and is exactly as injecting it again makes it (the
    /// reinvocation review after later admission steps, with the same configuration).
    Unchanged,
}

impl Pass {
    /// A stable, low-cardinality name for metric labels and audit annotations.
    pub fn label(&self) -> &'static str {
        match self {
            Pass::Skipped(reason) => reason.label(),
            Pass::NotPodCreate { .. } => "not_pod_create",
            Pass::NoObject => "no_object",
            Pass::Unchanged => "unchanged",
        }
    }
}

/// What the webhook answers for one review.
#[derive(Debug, Clone)]
pub enum Decision {
    /// `allowed: true`, no patch.
    Pass(Pass),
    /// `allowed: true` with a JSON patch, the engine's warnings, then one warning per
    /// guardrail finding about the injected pod.
    Patch {
        /// The RFC 6902 patch as JSON text.
        patch: Vec<u8>,
        warnings: Vec<String>,
        /// The ids of the findings among `warnings`, for metrics.
        findings: Vec<&'static str>,
        /// The pod already carried an injection: the patch brings it up to date.
        reinjection: bool,
    },
    /// `allowed: false` with a message naming every problem.
    Deny(Denial),
}

/// A failure of the injector itself: answered with HTTP 500 so `failurePolicy` decides.
#[derive(Debug, thiserror::Error)]
pub enum AdmitError {
    #[error(transparent)]
    Inject(#[from] InjectError),
    #[error("the injector failed unexpectedly: {0}")]
    Panic(String),
}

impl Decision {
    /// `injected`, `reinjected` (the pod already carried an injection), `skipped` or `denied`:
    /// the outcome label of metrics and audit annotations.
    pub fn outcome(&self) -> &'static str {
        match self {
            Decision::Pass(Pass::Unchanged) => "reinjected",
            Decision::Pass(_) => "skipped",
            Decision::Patch {
                reinjection: true, ..
            } => "reinjected",
            Decision::Patch { .. } => "injected",
            Decision::Deny(_) => "denied",
        }
    }

    /// The reason label: the skip reason, `unchanged` or `updated` for a re-injection, or empty.
    pub fn reason(&self) -> &'static str {
        match self {
            Decision::Pass(pass) => pass.label(),
            Decision::Patch {
                reinjection: true, ..
            } => "updated",
            Decision::Patch { .. } => "",
            Decision::Deny(_) => "invalid_annotations",
        }
    }
}

/// Runs the engine on one review with one configuration snapshot.
///
/// `native_sidecars` is the cluster-wide mode, already resolved by the caller. A panic inside
/// the engine is caught and reported as an error, so one bad pod never takes a connection down.
pub fn decide(
    config: &Config,
    review: &Review,
    native_sidecars: bool,
) -> Result<Decision, AdmitError> {
    decide_traced(config, review, native_sidecars).map(|traced| traced.decision)
}

/// A decision, with what the replica memo (`crate::replicas`) needs to know of how it was made.
#[derive(Debug, Clone)]
pub struct Traced {
    pub decision: Decision,
    /// A template read or wrote a string holding `kube-api-access-` (the prefix of the
    /// service-account token volume's name).
    pub templates_touched_token: bool,
}

impl Traced {
    fn plain(decision: Decision) -> Traced {
        Traced {
            decision,
            templates_touched_token: false,
        }
    }
}

/// [`decide`], telling whether a template read or wrote the token volume's name.
pub fn decide_traced(
    config: &Config,
    review: &Review,
    native_sidecars: bool,
) -> Result<Traced, AdmitError> {
    if !review.group.is_empty() || review.kind != "Pod" || review.operation != "CREATE" {
        return Ok(Traced::plain(Decision::Pass(Pass::NotPodCreate {
            kind: review.kind.clone(),
            operation: review.operation.clone(),
        })));
    }
    let Some(pod) = &review.object else {
        return Ok(Traced::plain(Decision::Pass(Pass::NoObject)));
    };
    let request = Request {
        pod,
        namespace: review.namespace.as_deref(),
        workload: None,
        native_sidecars,
    };
    let run = || -> Result<Traced, InjectError> {
        Ok(match inject::inject(config, &request)? {
            Outcome::Skipped(reason) => Traced::plain(Decision::Pass(Pass::Skipped(reason))),
            Outcome::Denied(denial) => Traced::plain(Decision::Deny(denial)),
            Outcome::Injected(injected) => {
                let templates_touched_token = injected.templates_touched_token;
                let patch = inject::patch_json(pod, &injected.pod);
                let decision = if patch == b"[]" {
                    Decision::Pass(Pass::Unchanged)
                } else {
                    let mut warnings = injected.warnings;
                    let ctx = pod_context(config, review, native_sidecars);
                    let findings = findings(config, &injected.pod, &ctx, &warnings);
                    warnings.extend(findings.iter().map(analyze::Finding::warning_text));
                    Decision::Patch {
                        patch,
                        warnings,
                        findings: findings.iter().map(|f| f.id).collect(),
                        reinjection: injected.reinjection,
                    }
                };
                Traced {
                    decision,
                    templates_touched_token,
                }
            }
        })
    };
    match catch_unwind(AssertUnwindSafe(run)) {
        Ok(result) => Ok(result?),
        Err(panic) => {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "panic with a non-text payload".to_owned());
            Err(AdmitError::Panic(message))
        }
    }
}

/// What the analysis knows about the pod beyond the pod: the mesh-wide settings of `config`.
/// The pod it judges is already injected, so most of it (native or classic, hold, CNI, image)
/// is read from the pod itself.
fn pod_context(config: &Config, review: &Review, native_sidecars: bool) -> PodContext {
    PodContext::for_config(config, native_sidecars, review.namespace.clone())
}

/// The enabled guardrail findings for the injected pod (the same `inject` prints).
fn findings(
    config: &Config,
    injected: &Value,
    ctx: &PodContext,
    engine_warnings: &[String],
) -> Vec<analyze::Finding> {
    analyze::injected_pod_warnings(config, injected, ctx, engine_warnings)
}

/// The AdmissionReview that answers `review` with `decision`, as JSON text.
///
/// Written straight to bytes: the patch is most of an answer, and building it as a JSON value
/// first would copy it, then scan its base64 text for characters to escape (there are none).
pub fn response(api_version: ApiVersion, uid: &str, decision: &Decision) -> Vec<u8> {
    let patch_len = match decision {
        Decision::Patch { patch, .. } => patch.len(),
        _ => 0,
    };
    let mut out = Vec::with_capacity(patch_len / 3 * 4 + 512);
    out.extend_from_slice(b"{\"apiVersion\":");
    json(&mut out, api_version.as_str());
    out.extend_from_slice(b",\"kind\":\"AdmissionReview\",\"response\":{\"uid\":");
    json(&mut out, uid);
    let mut audit = Map::new();
    audit.insert("outcome".into(), Value::String(decision.outcome().into()));
    match decision {
        Decision::Pass(Pass::Unchanged) => {
            out.extend_from_slice(b",\"allowed\":true");
            audit.insert(
                "reinjection".into(),
                Value::String(decision.reason().into()),
            );
        }
        Decision::Pass(pass) => {
            out.extend_from_slice(b",\"allowed\":true");
            // The API server prefixes audit keys with the webhook's name:
            // `namespace.sidecar-injector.istio.io/skip-reason`.
            audit.insert("skip-reason".into(), Value::String(pass.label().into()));
        }
        Decision::Patch {
            patch,
            warnings,
            reinjection,
            ..
        } => {
            if *reinjection {
                audit.insert(
                    "reinjection".into(),
                    Value::String(decision.reason().into()),
                );
            }
            out.extend_from_slice(b",\"allowed\":true,\"patchType\":\"JSONPatch\",\"patch\":\"");
            // The base64 alphabet needs no escaping inside a JSON string.
            let engine = base64::engine::general_purpose::STANDARD;
            let start = out.len();
            out.resize(
                start + base64::encoded_len(patch.len(), true).unwrap_or(0),
                0,
            );
            let written = engine.encode_slice(patch, &mut out[start..]).unwrap_or(0);
            out.truncate(start + written);
            out.push(b'"');
            if !warnings.is_empty() {
                out.extend_from_slice(b",\"warnings\":");
                json(&mut out, warnings);
            }
        }
        Decision::Deny(denial) => {
            out.extend_from_slice(b",\"allowed\":false,\"status\":");
            let status = json!({
                "status": "Failure",
                "code": 403,
                "reason": "Forbidden",
                "message": denial.to_string(),
            });
            json(&mut out, &status);
            audit.insert(
                "denial-reason".into(),
                Value::String(decision.reason().into()),
            );
        }
    }
    out.extend_from_slice(b",\"auditAnnotations\":");
    json(&mut out, &audit);
    out.extend_from_slice(b"}}");
    out
}

fn json<T: serde::Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) {
    // Writing plain JSON values into memory cannot fail.
    let _ = serde_json::to_writer(out, value);
}

/// A Kubernetes `Status` body for an HTTP error. `uid` is the review's uid when the review could
/// be decoded, so the failure can be matched to the API server's request in logs.
pub fn status(code: u16, reason: &str, message: &str, uid: Option<&str>) -> Value {
    let mut body = json!({
        "apiVersion": "v1",
        "kind": "Status",
        "status": "Failure",
        "code": code,
        "reason": reason,
        "message": message,
    });
    if let (Some(uid), Some(obj)) = (uid, body.as_object_mut()) {
        obj.insert(
            "details".into(),
            json!({"group": "admission.k8s.io", "kind": "AdmissionReview", "uid": uid}),
        );
    }
    body
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inject::{Injected, Problem};

    fn review_json(api_version: &str, object: Value) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "apiVersion": api_version,
            "kind": "AdmissionReview",
            "request": {
                "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "operation": "CREATE",
                "namespace": "default",
                "object": object,
                "dryRun": false,
            }
        }))
        .unwrap()
    }

    /// Where the head reads, the full review reads the same; anything unusual has no head.
    #[test]
    fn the_head_agrees_with_the_review_or_is_absent() {
        let with_volumes = |volumes: Value, node: Value| {
            let mut p = pod();
            p["spec"]["volumes"] = volumes;
            p["spec"]["nodeName"] = node;
            p
        };
        let token = json!([{"name": "data"}, {"name": "kube-api-access-x7k2p", "projected": {}}]);
        for (body, has_head) in [
            (review_json("admission.k8s.io/v1", pod()), true),
            (review_json("admission.k8s.io/v1beta1", pod()), true),
            (review_json("admission.k8s.io/v1", with_volumes(token.clone(), json!("node-1"))), true),
            (review_json("admission.k8s.io/v1", with_volumes(token, json!(""))), true),
            // Not a plain pod CREATE, or read unusually: the full review decides.
            (review_json("admission.k8s.io/v2", pod()), false),
            (review_json("admission.k8s.io/v1", Value::Null), false),
            (review_json("admission.k8s.io/v1", json!("a pod")), false),
            (review_json("admission.k8s.io/v1", with_volumes(json!({"a": 1}), Value::Null)), false),
            (review_json("admission.k8s.io/v1", with_volumes(json!([{"name": 7}]), Value::Null)), false),
            (br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u","kind":{"kind":"Pod"},"operation":"CREATE","object":{"spec":{"volumes":[],"volumes":[]}}}}"#.to_vec(), false),
            (br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u","kind":{"kind":"Pod"},"operation":"UPDATE","object":{}}}"#.to_vec(), false),
            (br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"","kind":{"kind":"Pod"},"operation":"CREATE","object":{}}}"#.to_vec(), false),
            (b"{\"apiVersion\":".to_vec(), false),
            // Text the head would skip without the checks the full read makes.
            (review_json("admission.k8s.io/v1", json!({"spec": {"x": "\u{e9}"}})), true),
            (br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u","kind":{"kind":"Pod"},"operation":"CREATE","object":{"x":"\ud800"}}}"#.to_vec(), false),
            (br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u","kind":{"kind":"Pod"},"operation":"CREATE","object":{"x":"\uD83D\uDE00"}}}"#.to_vec(), false),
            ([&br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u","kind":{"kind":"Pod"},"operation":"CREATE","object":{"x":""#[..], b"\x9a\"}}}"].concat(), false),
        ] {
            let head = Head::from_slice(&body);
            assert_eq!(head.is_some(), has_head, "{}", String::from_utf8_lossy(&body));
            let Some(head) = head else { continue };
            let review = Review::from_slice(&body).unwrap();
            let node = review.object.as_ref().and_then(|o| o.pointer("/spec/nodeName"));
            assert_eq!(head.api_version, review.api_version);
            assert_eq!(head.uid, review.uid);
            let span = head.uid_span.clone().expect("these uids are written without escapes");
            assert_eq!(&body[span], review.uid.as_bytes());
            assert_eq!(head.namespace, review.namespace);
            assert_eq!(head.dry_run, review.dry_run);
            assert_eq!(head.display_name, review.display_name());
            assert_eq!(
                head.node_name.as_deref(),
                node.and_then(Value::as_str).filter(|n| !n.is_empty())
            );
            let token = review.object.as_ref().and_then(|o| o.pointer("/spec/volumes/1/name"));
            assert_eq!(head.token_volume.as_deref(), token.and_then(Value::as_str));
        }
    }

    fn pod() -> Value {
        json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"generateName": "web-7d9-", "annotations": {"a/b": "c"}},
            "spec": {
                "containers": [{"name": "app", "image": "nginx", "futureField": {"x": [1, 2]}}],
                "someNewPodField": true
            }
        })
    }

    #[test]
    fn decodes_v1_and_keeps_the_object_verbatim() {
        let review = Review::from_slice(&review_json("admission.k8s.io/v1", pod())).unwrap();
        assert_eq!(review.api_version, ApiVersion::V1);
        assert_eq!(review.uid, "705ab4f5-6393-11e8-b7cc-42010a800002");
        assert_eq!(review.kind, "Pod");
        assert_eq!(review.operation, "CREATE");
        assert_eq!(review.namespace.as_deref(), Some("default"));
        assert_eq!(review.object, Some(pod()));
        assert_eq!(review.display_name(), "web-7d9-*");
    }

    #[test]
    fn decodes_v1beta1_and_echoes_it() {
        let review = Review::from_slice(&review_json("admission.k8s.io/v1beta1", pod())).unwrap();
        assert_eq!(review.api_version, ApiVersion::V1Beta1);
        let out: Value = serde_json::from_slice(&response(
            review.api_version,
            &review.uid,
            &Decision::Pass(Pass::NoObject),
        ))
        .unwrap();
        assert_eq!(out["apiVersion"], "admission.k8s.io/v1beta1");
        assert_eq!(out["kind"], "AdmissionReview");
        assert_eq!(out["response"]["uid"], review.uid.as_str());
    }

    #[test]
    fn rejects_what_is_not_a_review() {
        let cases: Vec<(&[u8], &str)> = vec![
            (b"{", "not valid JSON"),
            (b"[]", "not a JSON object"),
            (br#"{"apiVersion":"v1","kind":"AdmissionReview"}"#, "apiVersion"),
            (
                br#"{"apiVersion":"admission.k8s.io/v1","kind":"Pod"}"#,
                "not AdmissionReview",
            ),
            (
                br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#,
                "no `request`",
            ),
            (
                br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":""}}"#,
                "uid",
            ),
        ];
        for (body, expected) in cases {
            let err = Review::from_slice(body).unwrap_err().to_string();
            assert!(
                err.contains(expected),
                "{err:?} should mention {expected:?}"
            );
        }
    }

    #[test]
    fn a_null_object_is_no_object() {
        let review = Review::from_slice(&review_json("admission.k8s.io/v1", Value::Null)).unwrap();
        assert_eq!(review.object, None);
        let decision = decide(&Config::embedded(), &review, false).unwrap();
        assert!(matches!(decision, Decision::Pass(Pass::NoObject)));
    }

    #[test]
    fn only_pod_creates_reach_the_engine() {
        let mut review = Review::from_slice(&review_json("admission.k8s.io/v1", pod())).unwrap();
        review.operation = "UPDATE".into();
        let decision = decide(&Config::embedded(), &review, false).unwrap();
        assert_eq!(decision.reason(), "not_pod_create");
        review.operation = "CREATE".into();
        review.kind = "Deployment".into();
        review.group = "apps".into();
        let decision = decide(&Config::embedded(), &review, false).unwrap();
        assert_eq!(decision.reason(), "not_pod_create");
    }

    #[test]
    fn a_patch_response_applies_back_to_the_sent_object() {
        let review = Review::from_slice(&review_json("admission.k8s.io/v1", pod())).unwrap();
        let before = review.object.clone().unwrap();
        let mut after = before.clone();
        after["spec"]["containers"]
            .as_array_mut()
            .unwrap()
            .insert(0, json!({"name": "istio-proxy", "image": "proxyv2"}));
        after["metadata"]["annotations"]["sidecar.istio.io/status"] = json!("{}");
        let injected = Injected {
            pod: after.clone(),
            warnings: vec!["w".into()],
            reinjection: false,
            templates_touched_token: false,
        };
        let patch = inject::patch_json(&before, &injected.pod);
        let decision = Decision::Patch {
            patch,
            warnings: injected.warnings,
            findings: Vec::new(),
            reinjection: false,
        };
        let out: Value =
            serde_json::from_slice(&response(review.api_version, &review.uid, &decision)).unwrap();
        let resp = &out["response"];
        assert_eq!(resp["allowed"], true);
        assert_eq!(resp["patchType"], "JSONPatch");
        assert_eq!(resp["warnings"], json!(["w"]));
        assert_eq!(resp["auditAnnotations"]["outcome"], "injected");
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(resp["patch"].as_str().unwrap())
            .unwrap();
        let patch: json_patch::Patch = serde_json::from_slice(&bytes).unwrap();
        let mut applied = before;
        json_patch::patch(&mut applied, &patch).unwrap();
        assert_eq!(applied, after);
        // The unknown field of the container that moved in the list is still there.
        assert_eq!(
            applied["spec"]["containers"][1]["futureField"],
            json!({"x": [1, 2]})
        );
    }

    #[test]
    fn a_denial_is_not_allowed_and_names_the_annotation() {
        let review = Review::from_slice(&review_json("admission.k8s.io/v1", pod())).unwrap();
        let denial = Denial {
            problems: vec![Problem {
                annotation: "sidecar.istio.io/interceptionMode".into(),
                value: "BOGUS".into(),
                accepted: "accepted: REDIRECT, TPROXY, NONE".into(),
            }],
        };
        let out: Value = serde_json::from_slice(&response(
            review.api_version,
            &review.uid,
            &Decision::Deny(denial),
        ))
        .unwrap();
        let resp = &out["response"];
        assert_eq!(resp["allowed"], false);
        assert!(resp.get("patch").is_none());
        assert_eq!(resp["status"]["code"], 403);
        let message = resp["status"]["message"].as_str().unwrap();
        assert!(message.contains("sidecar.istio.io/interceptionMode"));
        assert!(message.contains("BOGUS"));
    }

    #[test]
    fn a_skip_is_allowed_without_patch_and_says_why() {
        let review = Review::from_slice(&review_json("admission.k8s.io/v1", pod())).unwrap();
        let out: Value = serde_json::from_slice(&response(
            review.api_version,
            &review.uid,
            &Decision::Pass(Pass::Skipped(SkipReason::HostNetwork)),
        ))
        .unwrap();
        let resp = &out["response"];
        assert_eq!(resp["allowed"], true);
        assert!(resp.get("patch").is_none());
        assert!(resp.get("patchType").is_none());
        assert_eq!(resp["auditAnnotations"]["outcome"], "skipped");
        assert_eq!(resp["auditAnnotations"]["skip-reason"], "host_network");
    }

    #[test]
    fn status_carries_the_uid_when_known() {
        let with = status(500, "InternalError", "boom", Some("u-1"));
        assert_eq!(with["details"]["uid"], "u-1");
        assert_eq!(with["code"], 500);
        let without = status(400, "BadRequest", "bad", None);
        assert!(without.get("details").is_none());
    }
}
