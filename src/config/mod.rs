//! The ConfigMap model: the keys `config`, `values` and `mesh`, loaded, validated and compiled
//! once per load. A [`Config`] is immutable; the server swaps whole snapshots on reload.
//!
//! `values` and `mesh` are deep-merged over the embedded defaults (as `helm -f` merges a values
//! file), so a ConfigMap or a `--values` file only needs the keys it changes. `config` is taken
//! whole: it is the policy and the templates, and half of one is not meaningful.

use std::path::Path;

use serde_json::Value;

mod defaults;
mod error;
mod injection;
mod merge;
mod render_check;
mod templates;

pub use error::ConfigError;
pub use injection::{Injection, LabelSelector, Policy};
pub use merge::deep_merge;
pub use templates::Templates;

/// The raw text of the three ConfigMap keys. An empty `values` or `mesh` means "the defaults".
#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// `config` (YAML): policy, templates, aliases, selectors, injectedAnnotations.
    pub config: String,
    /// `values` (JSON or YAML): Istio's Helm values.
    pub values: String,
    /// `mesh` (YAML): the MeshConfig subset.
    pub mesh: String,
}

impl Sources {
    /// The embedded default of all three keys.
    pub fn embedded() -> Sources {
        Sources {
            config: defaults::config_with_templates(),
            values: String::new(),
            mesh: String::new(),
        }
    }
}

/// Where `istio-proxy` goes: a native sidecar (an init container with `restartPolicy: Always`,
/// Kubernetes 1.29+) or a classic container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NativeMode {
    Enabled,
    Disabled,
    /// Decided from the cluster's kubelet versions by the server; without a cluster, off.
    Auto,
}

impl std::str::FromStr for NativeMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "true" => Ok(NativeMode::Enabled),
            "false" => Ok(NativeMode::Disabled),
            "auto" => Ok(NativeMode::Auto),
            other => Err(format!(
                "{other:?} is not a native-sidecar mode; accepted: true, false, auto"
            )),
        }
    }
}

/// One validated, compiled configuration snapshot.
#[derive(Debug)]
pub struct Config {
    pub(crate) injection: Injection,
    pub(crate) values: Value,
    pub(crate) mesh: Value,
    pub(crate) templates: Templates,
    /// `values` and `mesh` converted once for the template context: a clone is a reference
    /// count, so per-request rendering never re-serializes them.
    pub(crate) values_ctx: minijinja::Value,
    pub(crate) mesh_ctx: minijinja::Value,
    /// The ProxyConfig of pods without a `proxy.istio.io/config` annotation.
    pub(crate) proxy_defaults: ProxyDefaults,
    /// Template output reused for pods that read alike (a pure memo; see `inject::renders`).
    pub(crate) renders: crate::inject::renders::RenderMemo,
    native_mode: NativeMode,
    /// What loaded but looks wrong (an unknown ProxyConfig key): the server logs these at
    /// load, the CLI prints them on standard error.
    warnings: Vec<String>,
}

/// The mesh's default ProxyConfig, and what templates see of it, computed once per load.
#[derive(Debug)]
pub(crate) struct ProxyDefaults {
    pub config: Value,
    pub ctx: minijinja::Value,
    /// The PROXY_CONFIG value for it.
    pub json: String,
    /// The proxy's resources from `global.proxy.resources`.
    pub resources: minijinja::Value,
    /// The proxy image type of pods that do not pick one, and the two images for it.
    pub image_type: Option<String>,
    pub proxy_image: String,
    pub proxy_init_image: String,
}

impl ProxyDefaults {
    fn new(mesh: &Value, values: &Value) -> ProxyDefaults {
        let config = crate::inject::proxy_config::effective(mesh, None);
        let istio_namespace = values
            .pointer("/global/istioNamespace")
            .and_then(Value::as_str)
            .unwrap_or("istio-system");
        let image_type = crate::inject::images::proxy_image_type(None, &config, values);
        ProxyDefaults {
            proxy_image: crate::inject::images::image(
                values,
                "/global/proxy/image",
                Some(image_type.unwrap_or("")),
            ),
            proxy_init_image: crate::inject::images::image(
                values,
                "/global/proxy_init/image",
                None,
            ),
            image_type: image_type.map(str::to_string),
            ctx: minijinja::Value::from(minijinja::value::Serde(&config)),
            json: crate::inject::proxy_config::cleaned_json(&config, istio_namespace),
            resources: minijinja::Value::from(minijinja::value::Serde(
                crate::inject::context::values_resources(values),
            )),
            config,
        }
    }
}

impl Config {
    /// The default of all three keys compiled into the binary.
    pub fn embedded() -> Config {
        // The embedded sources are compiled in and checked by the test suite
        // (`embedded_config_loads`): this cannot fail on anything that comes from outside.
        match Config::from_sources(&Sources::embedded()) {
            Ok(config) => config,
            Err(err) => panic!("the embedded default configuration is invalid: {err}"),
        }
    }

    /// Parses, validates and compiles the three keys, then renders every template for a few
    /// representative pods (see `render_check`).
    pub fn from_sources(sources: &Sources) -> Result<Config, ConfigError> {
        let injection = Injection::parse(&sources.config)?;
        let values = merged_over(defaults::VALUES, &sources.values, "values")?;
        let mesh = merged_over(defaults::MESH, &sources.mesh, "mesh")?;
        let native_mode = native_mode_of(&values)?;
        check_values(&values)?;
        let warnings = check_mesh(&mesh)?;
        let templates = Templates::compile(&injection.templates)?;
        injection.check_template_names(&templates)?;
        let config = Config {
            proxy_defaults: ProxyDefaults::new(&mesh, &values),
            renders: Default::default(),
            values_ctx: minijinja::Value::from(minijinja::value::Serde(&values)),
            mesh_ctx: minijinja::Value::from(minijinja::value::Serde(&mesh)),
            injection,
            values,
            mesh,
            templates,
            native_mode,
            warnings,
        };
        render_check::check(&config)?;
        // The check's renders are not worth keeping for real pods.
        Ok(Config {
            renders: Default::default(),
            ..config
        })
    }

    /// Loads a mounted ConfigMap directory holding the files `config`, `values` and `mesh`
    /// (`values` and `mesh` may be absent: the defaults apply).
    pub fn load_dir(dir: &Path) -> Result<Config, ConfigError> {
        let read = |name: &str, required: bool| -> Result<String, ConfigError> {
            let path = dir.join(name);
            match std::fs::read_to_string(&path) {
                Ok(text) => Ok(text),
                Err(e) if !required && e.kind() == std::io::ErrorKind::NotFound => {
                    Ok(String::new())
                }
                Err(source) => Err(ConfigError::Read {
                    path: path.display().to_string(),
                    source,
                }),
            }
        };
        let config = Config::from_sources(&Sources {
            config: read("config", true)?,
            values: read("values", false)?,
            mesh: read("mesh", false)?,
        })?;
        // The server loads its config here, at start and on every change: say what looks wrong.
        for warning in config.warnings() {
            tracing::warn!(dir = %dir.display(), "config: {warning}");
        }
        Ok(config)
    }

    /// The parsed `config` key.
    pub fn injection(&self) -> &Injection {
        &self.injection
    }

    /// The effective `values` (defaults merged with the loaded ones).
    pub fn values(&self) -> &Value {
        &self.values
    }

    /// The effective `mesh`.
    pub fn mesh(&self) -> &Value {
        &self.mesh
    }

    /// The native-sidecar mode from `values.sidecarInjectorWebhook.nativeSidecars`
    /// (`true`, `false` or `auto`; absent means `auto`, as istiod's default).
    pub fn native_mode(&self) -> NativeMode {
        self.native_mode
    }

    /// What loaded but looks wrong, one sentence each (see [`Config`]'s `warnings`).
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// Whether the guardrail finding `id` is switched on (all are, unless the `config` key lists
    /// the id under `findings.disabled`).
    pub fn finding_enabled(&self, id: &str) -> bool {
        !self.injection.findings.disabled.iter().any(|d| d == id)
    }
}

/// Parses `text` (JSON or YAML; empty means nothing) and deep-merges it over `defaults`.
fn merged_over(defaults: &str, text: &str, key: &str) -> Result<Value, ConfigError> {
    let mut base = parse_mapping(defaults, key)?;
    if !text.trim().is_empty() {
        let overlay = parse_mapping(text, key)?;
        deep_merge(&mut base, &overlay);
    }
    Ok(base)
}

fn parse_mapping(text: &str, key: &str) -> Result<Value, ConfigError> {
    let value = crate::yaml::parse_one(text).map_err(|e| ConfigError::Invalid {
        key: key.to_string(),
        line: e.line,
        message: e.message,
    })?;
    match value {
        Value::Object(_) => Ok(value),
        Value::Null => Ok(Value::Object(Default::default())),
        other => Err(ConfigError::Invalid {
            key: key.to_string(),
            line: None,
            message: format!(
                "expected a mapping of settings, found {}",
                crate::inject::json_kind(&other)
            ),
        }),
    }
}

fn native_mode_of(values: &Value) -> Result<NativeMode, ConfigError> {
    match values.pointer("/sidecarInjectorWebhook/nativeSidecars") {
        None | Some(Value::Null) => Ok(NativeMode::Auto),
        Some(Value::Bool(true)) => Ok(NativeMode::Enabled),
        Some(Value::Bool(false)) => Ok(NativeMode::Disabled),
        Some(Value::String(s)) => s.parse().map_err(|message| ConfigError::Invalid {
            key: "values".into(),
            line: None,
            message: format!("sidecarInjectorWebhook.nativeSidecars: {message}"),
        }),
        Some(other) => Err(ConfigError::Invalid {
            key: "values".into(),
            line: None,
            message: format!(
                "sidecarInjectorWebhook.nativeSidecars must be true, false or \"auto\", found {other}"
            ),
        }),
    }
}

/// The few `values` settings the engine reads as numbers or flags must have the right type:
/// a mistake here would otherwise surface as a template error on every pod.
fn check_values(values: &Value) -> Result<(), ConfigError> {
    let invalid = |message: String| ConfigError::Invalid {
        key: "values".into(),
        line: None,
        message,
    };
    if !values.get("global").is_some_and(Value::is_object) {
        return Err(invalid("`global` must be a mapping".into()));
    }
    for (path, what) in [
        ("/global/proxy/statusPort", "a port number (0 to 65535)"),
        (
            "/global/proxy/readinessInitialDelaySeconds",
            "a whole number",
        ),
        ("/global/proxy/readinessPeriodSeconds", "a whole number"),
        ("/global/proxy/readinessFailureThreshold", "a whole number"),
    ] {
        if let Some(v) = values.pointer(path) {
            let ok = match path {
                "/global/proxy/statusPort" => v.as_u64().is_some_and(|p| p <= 65535),
                _ => v.as_u64().is_some_and(|n| n <= u64::from(u32::MAX)),
            };
            if !ok {
                return Err(invalid(format!(
                    "{} must be {what}, found {v}",
                    &path[1..].replace('/', ".")
                )));
            }
        }
    }
    for path in [
        "/global/hub",
        "/global/tag",
        "/global/proxy/image",
        "/global/proxy_init/image",
    ] {
        if let Some(v) = values.pointer(path)
            && !(v.is_string() || v.is_number())
        {
            return Err(invalid(format!(
                "{} must be a string, found {v}",
                &path[1..].replace('/', ".")
            )));
        }
    }
    Ok(())
}

fn check_mesh(mesh: &Value) -> Result<Vec<String>, ConfigError> {
    let invalid = |message: String| ConfigError::Invalid {
        key: "mesh".into(),
        line: None,
        message,
    };
    let mut warnings = Vec::new();
    match mesh.get("defaultConfig") {
        None | Some(Value::Null) => {}
        // The same rules as the `proxy.istio.io/config` annotation.
        Some(Value::Object(dc)) => match crate::inject::proxy_config::check(dc) {
            Ok(unknown) => warnings.extend(
                unknown
                    .into_iter()
                    .map(|w| format!("mesh: defaultConfig: {w}")),
            ),
            Err(e) => return Err(invalid(format!("defaultConfig: {e}"))),
        },
        Some(_) => {
            return Err(invalid(
                "defaultConfig must be a mapping (a ProxyConfig)".into(),
            ));
        }
    }
    for path in [
        "/proxyListenPort",
        "/proxyInboundListenPort",
        "/defaultConfig/statusPort",
    ] {
        if let Some(v) = mesh.pointer(path)
            && v.as_u64().is_none_or(|p| p > 65535)
        {
            return Err(invalid(format!(
                "{} must be a port number (0 to 65535), found {v}",
                &path[1..].replace('/', ".")
            )));
        }
    }
    Ok(warnings)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_config_loads() {
        let config = Config::from_sources(&Sources::embedded()).unwrap();
        assert_eq!(config.injection.default_templates, vec!["sidecar"]);
        assert_eq!(config.values["global"]["hub"], "docker.io/istio");
        assert_eq!(config.mesh["defaultConfig"]["statusPort"], 15020);
        assert_eq!(config.native_mode(), NativeMode::Auto);
    }

    #[test]
    fn values_overlay_is_deep_merged() {
        let mut sources = Sources::embedded();
        sources.values = "global:\n  hub: registry.example.com/istio\n".into();
        let config = Config::from_sources(&sources).unwrap();
        assert_eq!(config.values["global"]["hub"], "registry.example.com/istio");
        assert_eq!(
            config.values["global"]["tag"], "1.28.0",
            "untouched keys keep defaults"
        );
    }

    #[test]
    fn native_mode_comes_from_values() {
        let mut sources = Sources::embedded();
        sources.values = "sidecarInjectorWebhook: {nativeSidecars: true}".into();
        assert_eq!(
            Config::from_sources(&sources).unwrap().native_mode(),
            NativeMode::Enabled
        );
        sources.values = "sidecarInjectorWebhook: {nativeSidecars: sometimes}".into();
        let err = Config::from_sources(&sources).unwrap_err().to_string();
        assert!(err.contains("accepted: true, false, auto"), "{err}");
    }

    #[test]
    fn bad_values_name_the_key_and_line() {
        let mut sources = Sources::embedded();
        sources.values = "global:\n  hub: [unclosed\n".into();
        let err = Config::from_sources(&sources).unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("invalid `values` at line"), "{text}");

        sources.values = "global: {proxy: {statusPort: seventy}}".into();
        let text = Config::from_sources(&sources).unwrap_err().to_string();
        assert!(
            text.contains("global.proxy.statusPort must be a port number"),
            "{text}"
        );

        sources.values = "[1, 2]".into();
        let text = Config::from_sources(&sources).unwrap_err().to_string();
        assert!(text.contains("expected a mapping"), "{text}");
    }

    #[test]
    fn bad_mesh_is_rejected() {
        let mut sources = Sources::embedded();
        sources.mesh = "proxyListenPort: 99999".into();
        let text = Config::from_sources(&sources).unwrap_err().to_string();
        assert!(text.contains("invalid `mesh`"), "{text}");
        assert!(text.contains("proxyListenPort"), "{text}");
    }

    #[test]
    fn mesh_default_config_follows_the_annotation_rules() {
        let mut sources = Sources::embedded();
        sources.mesh = "defaultConfig:\n  holdApplicationUntilProxyStarts: yes please\n".into();
        let text = Config::from_sources(&sources).unwrap_err().to_string();
        assert!(
            text.contains("invalid `mesh`: defaultConfig: field \"holdApplicationUntilProxyStarts\" is \"yes please\"; accepted: true or false"),
            "{text}"
        );
        sources.mesh = "defaultConfig:\n  holdApplicationUntilProxyStart: true\n".into();
        let config = Config::from_sources(&sources).unwrap();
        assert_eq!(config.warnings().len(), 1);
        assert!(
            config.warnings()[0].contains("did you mean \"holdApplicationUntilProxyStarts\""),
            "{:?}",
            config.warnings()
        );
        assert!(Config::embedded().warnings().is_empty());
    }

    #[test]
    fn findings_can_be_switched_off() {
        let mut sources = Sources::embedded();
        sources.config = sources.config.replace(
            "findings:\n  disabled: []",
            "findings:\n  disabled: [IST0001]",
        );
        let config = Config::from_sources(&sources).unwrap();
        assert!(!config.finding_enabled("IST0001"));
        assert!(config.finding_enabled("IST0002"));
    }

    #[test]
    fn load_dir_reads_the_configmap_files_and_defaults_missing_ones() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config"), defaults::config_with_templates()).unwrap();
        std::fs::write(dir.path().join("values"), r#"{"global":{"tag":"9.9.9"}}"#).unwrap();
        let config = Config::load_dir(dir.path()).unwrap();
        assert_eq!(config.values["global"]["tag"], "9.9.9");
        assert_eq!(config.mesh["proxyListenPort"], 15001);

        let empty = tempfile::tempdir().unwrap();
        let err = Config::load_dir(empty.path()).unwrap_err().to_string();
        assert!(err.starts_with("cannot read"), "{err}");
    }
}
