//! Where the proxy and the traffic redirect sit in a pod, before or after injection.
//!
//! The analysis runs on pods the injector has not touched yet (the CLI, manifests in CI) and on
//! pods it has just injected (admission). For an injected pod the containers show what happened;
//! for any other pod the mode is predicted from the [`PodContext`] and the pod's annotations,
//! following Istio's ordering (reference §1, `reorderPod`):
//! - native: `istio-init` (or `istio-validation`), `istio-proxy`, then user init containers;
//! - classic: `istio-validation` (istio-cni), user init containers, then `istio-init`.

use serde_json::Value;

use super::PodContext;
use super::fields::{annotation, at, list_at, str_at};

pub const PROXY: &str = "istio-proxy";
pub const INIT: &str = "istio-init";
/// The init container istio-cni uses instead of `istio-init`: it only checks the redirect that
/// the CNI plugin set up before any container started.
pub const VALIDATION: &str = "istio-validation";
const CORE_DUMP: &str = "enable-core-dump";
const STATUS_ANNOTATION: &str = "sidecar.istio.io/status";
const NATIVE_ANNOTATION: &str = "sidecar.istio.io/nativeSidecar";
const PROXY_CONFIG_ANNOTATION: &str = "proxy.istio.io/config";
const INTERCEPTION_ANNOTATION: &str = "sidecar.istio.io/interceptionMode";

/// One container of the pod with the path it sits at.
#[derive(Debug, Clone)]
pub struct Container<'a> {
    pub value: &'a Value,
    pub name: &'a str,
    /// `spec.containers[0]`, relative to the pod.
    pub path: String,
    /// In `initContainers`.
    pub init: bool,
    /// An init container with `restartPolicy: Always`: a native sidecar that keeps running.
    pub sidecar: bool,
    /// Added by the injector (or a user override of one of its containers).
    pub injected: bool,
}

impl Container<'_> {
    /// Runs alongside the application: a regular container or a user native sidecar.
    pub fn is_app(&self) -> bool {
        !self.injected && (!self.init || self.sidecar)
    }

    /// The UID it runs as: its own `runAsUser`, else the pod's.
    pub fn run_as_user(&self, pod: &Value) -> Option<(i64, RunAsSource)> {
        if let Some(uid) = at(self.value, &["securityContext", "runAsUser"]).and_then(Value::as_i64)
        {
            return Some((uid, RunAsSource::Container));
        }
        at(pod, &["spec", "securityContext", "runAsUser"])
            .and_then(Value::as_i64)
            .map(|uid| (uid, RunAsSource::Pod))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunAsSource {
    Container,
    Pod,
}

/// What the analysis knows about a pod's sidecar setup.
#[derive(Debug)]
pub struct Layout<'a> {
    pub containers: Vec<Container<'a>>,
    /// The pod already carries the injected containers.
    pub injected: bool,
    /// `istio-proxy` runs as a native sidecar.
    pub native: bool,
    /// The app containers wait for the proxy (`holdApplicationUntilProxyStarts`).
    pub hold: bool,
    /// The redirect comes from istio-cni, so it exists before any init container runs.
    pub cni: bool,
    /// `sidecar.istio.io/interceptionMode: NONE`: there is no redirect at all.
    pub no_interception: bool,
    /// The UID whose traffic the redirect lets through.
    pub proxy_uid: i64,
}

impl<'a> Layout<'a> {
    pub fn of(pod: &'a Value, ctx: &PodContext) -> Layout<'a> {
        let injected_names = status_names(pod);
        let is_injected_name = |name: &str| {
            matches!(name, PROXY | INIT | VALIDATION | CORE_DUMP)
                || injected_names.iter().any(|n| n == name)
        };
        let mut containers = Vec::new();
        for (list, init) in [("initContainers", true), ("containers", false)] {
            for (i, c) in list_at(pod, &["spec", list]).iter().enumerate() {
                let name = str_at(c, &["name"]).unwrap_or("");
                containers.push(Container {
                    value: c,
                    name,
                    path: format!("spec.{list}[{i}]"),
                    init,
                    sidecar: init && str_at(c, &["restartPolicy"]) == Some("Always"),
                    injected: is_injected_name(name),
                });
            }
        }

        let proxy = containers.iter().find(|c| c.name == PROXY);
        // A pod is injected when the injector's own containers are there; a user `istio-proxy`
        // alone (an override of the template's) does not count.
        let injected = annotation(pod, STATUS_ANNOTATION).is_some()
            || containers
                .iter()
                .any(|c| c.name == INIT || c.name == VALIDATION);
        let proxy_config = annotation(pod, PROXY_CONFIG_ANNOTATION).and_then(read_proxy_config);
        let annotation_hold = proxy_config
            .as_ref()
            .and_then(|c| c.get("holdApplicationUntilProxyStarts"))
            .and_then(Value::as_bool)
            == Some(true);

        let (native, hold, cni) = match proxy {
            Some(p) if injected => {
                let native = p.init;
                // Classic hold: the proxy is the first container and blocks in postStart.
                let first_app_container = containers.iter().find(|c| !c.init);
                let hold = !native
                    && first_app_container.is_some_and(|c| c.name == PROXY)
                    && at(p.value, &["lifecycle", "postStart"]).is_some();
                let cni = containers.iter().any(|c| c.name == VALIDATION);
                (native, hold, cni)
            }
            _ => {
                // Istio: `"false"` turns native mode off, any other value turns it on.
                let native = match annotation(pod, NATIVE_ANNOTATION) {
                    Some("false") => false,
                    Some(_) => true,
                    None => ctx.native_sidecars,
                };
                (native, ctx.hold_application || annotation_hold, ctx.cni)
            }
        };

        // A user `istio-proxy` with its own non-zero runAsUser moves the redirect's exemption to
        // that UID (istio `adjustInitContainerUser`).
        let proxy_uid = proxy
            .and_then(|p| at(p.value, &["securityContext", "runAsUser"]))
            .and_then(Value::as_i64)
            .filter(|uid| *uid != 0)
            .unwrap_or(ctx.proxy_uid);

        Layout {
            containers,
            injected,
            native,
            hold,
            cni,
            no_interception: annotation(pod, INTERCEPTION_ANNOTATION) == Some("NONE"),
            proxy_uid,
        }
    }

    pub fn app_containers(&self) -> impl Iterator<Item = &Container<'a>> {
        self.containers.iter().filter(|c| c.is_app())
    }

    pub fn user_containers(&self) -> impl Iterator<Item = &Container<'a>> {
        self.containers.iter().filter(|c| !c.injected)
    }

    /// The injected proxy container, if the pod has one.
    pub fn proxy(&self) -> Option<&Container<'a>> {
        self.containers.iter().find(|c| c.name == PROXY)
    }

    /// The init sequence as the kubelet will run it: for an injected pod, as written; otherwise
    /// as the injector will order it.
    pub fn init_sequence(&self) -> Vec<InitStep<'_, 'a>> {
        let user = || {
            self.containers
                .iter()
                .filter(|c| c.init && !c.injected)
                .map(InitStep::User)
        };
        let mut steps = Vec::new();
        if self.cni {
            // The CNI plugin installs the redirect when the pod sandbox is created.
            steps.push(InitStep::Redirect);
        }
        if self.injected {
            for c in self.containers.iter().filter(|c| c.init) {
                match c.name {
                    INIT => steps.push(InitStep::Redirect),
                    PROXY => steps.push(InitStep::ProxyReady),
                    _ if c.injected => {}
                    _ => steps.push(InitStep::User(c)),
                }
            }
        } else if self.native {
            // The kubelet starts the next init container once the native proxy's startup probe
            // passes, so user init containers find a ready proxy.
            steps.push(InitStep::Redirect);
            steps.push(InitStep::ProxyReady);
            steps.extend(user());
        } else {
            steps.extend(user());
            steps.push(InitStep::Redirect);
        }
        steps
    }
}

/// One step of the pod's init phase, as far as networking is concerned.
#[derive(Debug)]
pub enum InitStep<'l, 'a> {
    /// From here on, outbound traffic is redirected to the proxy's port 15001.
    Redirect,
    /// From here on, the proxy listens.
    ProxyReady,
    User(&'l Container<'a>),
}

/// Container names listed in the `sidecar.istio.io/status` annotation.
fn status_names(pod: &Value) -> Vec<String> {
    let Some(status) =
        annotation(pod, STATUS_ANNOTATION).and_then(|text| crate::value::from_str(text).ok())
    else {
        return Vec::new();
    };
    ["initContainers", "containers"]
        .iter()
        .flat_map(|key| list_at(&status, &[key]))
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect()
}

/// Whether the proxy image is distroless, by Istio's precedence: the injected image when the pod
/// is injected; else `sidecar.istio.io/proxyImage` (used verbatim when it contains `/`); else
/// `sidecar.istio.io/proxyImageType`; else the `image.imageType` of `proxy.istio.io/config`; else
/// the mesh-wide variant the caller knows.
pub fn proxy_is_distroless(pod: &Value, layout: &Layout<'_>, ctx: &PodContext) -> bool {
    if layout.injected
        && let Some(image) = layout.proxy().and_then(|p| str_at(p.value, &["image"]))
    {
        return image.contains("distroless");
    }
    if let Some(image) = annotation(pod, "sidecar.istio.io/proxyImage").filter(|i| i.contains('/'))
    {
        return image.contains("distroless");
    }
    if let Some(t) = annotation(pod, "sidecar.istio.io/proxyImageType") {
        return t == "distroless";
    }
    let from_proxy_config = annotation(pod, PROXY_CONFIG_ANNOTATION)
        .and_then(read_proxy_config)
        .and_then(|c| {
            c.get("image")?
                .get("imageType")?
                .as_str()
                .map(str::to_string)
        });
    match from_proxy_config {
        Some(t) => t == "distroless",
        None => ctx.distroless_proxy,
    }
}

/// The pod's ProxyConfig annotation read, when it reads and is within the engine's limits (see
/// `inject::prescan`): a value the webhook would refuse is not worth the YAML reader's time.
fn read_proxy_config(text: &str) -> Option<Value> {
    use crate::inject::prescan::{self, Syntax};
    prescan::check(text, Syntax::Yaml).ok()?;
    crate::yaml::parse_one(text).ok()
}
