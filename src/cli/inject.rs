//! `sidecar-injector inject`: manual injection of manifests, like `istioctl kube-inject`, with
//! the same engine the webhook runs. Also the configuration flags `inject` and `analyze` share.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use serde_json::Value;

use crate::analyze::PodContext;
use crate::config::{Config, NativeMode, Policy, Sources};
use crate::manifest::{self, Decided, Decision};

const EXIT_CODES: &str = "\
Exit codes:
  0  every workload injected or skipped; the result is written
  1  a workload was refused (invalid injection annotations) or cannot be injected; nothing is written
  2  the input, the configuration or the arguments cannot be read";

/// The injector configuration, as `inject` and `analyze` both take it: the embedded default,
/// with files over it.
#[derive(Debug, clap::Args)]
pub struct ConfigArgs {
    /// The `config` key (policy, templates, aliases, ...), replacing the embedded one; or a
    /// ConfigMap directory holding the files `config`, `values` and `mesh`.
    #[arg(long, value_name = "FILE|DIR")]
    pub config: Option<PathBuf>,

    /// Istio Helm values (YAML or JSON), deep-merged over the embedded defaults.
    #[arg(long, value_name = "FILE")]
    pub values: Option<PathBuf>,

    /// MeshConfig (YAML), deep-merged over the embedded defaults.
    #[arg(long, value_name = "FILE")]
    pub mesh: Option<PathBuf>,

    /// Control-plane revision to inject for (sets values.revision).
    #[arg(long, value_name = "REVISION")]
    pub revision: Option<String>,

    /// Put istio-proxy in initContainers with restartPolicy Always (Kubernetes 1.33+). Defaults
    /// to the values' sidecarInjectorWebhook.nativeSidecars; `auto` there means false here, as
    /// there is no cluster to ask.
    #[arg(long, value_name = "true|false")]
    pub native_sidecars: Option<bool>,
}

/// A configuration loaded from [`ConfigArgs`].
pub struct Loaded {
    pub config: Config,
    /// Whether istio-proxy is a native sidecar.
    pub native: bool,
    /// The values say `auto` and no flag decided: native sidecars are off.
    pub native_auto: bool,
}

fn read_file(path: &Path, what: &str) -> anyhow::Result<String> {
    std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the {what} file {}", path.display()))
}

impl ConfigArgs {
    /// The configuration from the flags over the embedded defaults. Like istioctl kube-inject,
    /// running the command is the request to inject, so the policy does not hold a workload
    /// back; an explicit opt-out and the selectors still do.
    pub fn load(&self) -> anyhow::Result<Loaded> {
        let mut sources = Sources::embedded();
        if let Some(path) = &self.config {
            if path.is_dir() {
                let read = |name: &str| -> anyhow::Result<String> {
                    let file = path.join(name);
                    match std::fs::read_to_string(&file) {
                        Ok(text) => Ok(text),
                        Err(e) if name != "config" && e.kind() == std::io::ErrorKind::NotFound => {
                            Ok(String::new())
                        }
                        Err(e) => Err(e).with_context(|| format!("cannot read {}", file.display())),
                    }
                };
                sources.config = read("config")?;
                sources.values = read("values")?;
                sources.mesh = read("mesh")?;
            } else {
                sources.config = read_file(path, "config")?;
            }
        }
        if let Some(path) = &self.values {
            sources.values = read_file(path, "values")?;
        }
        if let Some(path) = &self.mesh {
            sources.mesh = read_file(path, "mesh")?;
        }
        if let Some(revision) = &self.revision {
            // `default` is the unnamed revision, as istioctl treats it.
            let revision = if revision == "default" {
                ""
            } else {
                revision.as_str()
            };
            let mut values = if sources.values.trim().is_empty() {
                serde_json::json!({})
            } else {
                crate::yaml::parse_one(&sources.values).context("invalid `values`")?
            };
            if let Some(map) = values.as_object_mut() {
                map.insert("revision".into(), revision.into());
            }
            sources.values = values.to_string();
        }
        let mut config = Config::from_sources(&sources).context("invalid configuration")?;
        config.injection.policy = Policy::Enabled;
        let native = match self.native_sidecars {
            Some(v) => v,
            None => config.native_mode() == NativeMode::Enabled,
        };
        let native_auto =
            self.native_sidecars.is_none() && config.native_mode() == NativeMode::Auto;
        Ok(Loaded {
            config,
            native,
            native_auto,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// The manifest as YAML; documents the command does not change are kept as written.
    Yaml,
    /// Each document as a JSON object (what kubectl sends to the API server).
    Json,
}

/// `-o` as a format, with a pointer to `--output-file` for those used to `istioctl kube-inject
/// -o FILE`, where `-o` names the file.
fn parse_format(value: &str) -> Result<Format, String> {
    match value {
        "yaml" => Ok(Format::Yaml),
        "json" => Ok(Format::Json),
        other => Err(format!(
            "`{other}` is not an output format; accepted: yaml, json \
             (to write to a file, use --output-file {other})"
        )),
    }
}

#[derive(Debug, clap::Args)]
#[command(after_help = EXIT_CODES)]
pub struct InjectArgs {
    /// Manifest to inject (multi-document YAML); `-` reads standard input.
    #[arg(short = 'f', long = "filename", value_name = "FILE")]
    pub file: String,

    /// Output format: yaml or json.
    #[arg(
        short = 'o',
        long = "output",
        value_name = "FORMAT",
        value_parser = parse_format,
        default_value = "yaml"
    )]
    pub output: Format,

    /// Write the result to this file instead of standard output; written only when every
    /// workload injected or was skipped.
    #[arg(long = "output-file", value_name = "FILE")]
    pub output_file: Option<PathBuf>,

    /// Print nothing on standard error but errors (no line per workload, no warnings).
    #[arg(short = 'q', long)]
    pub quiet: bool,

    #[command(flatten)]
    pub config: ConfigArgs,
}

pub fn run(args: InjectArgs) -> anyhow::Result<ExitCode> {
    let stderr = &mut std::io::stderr();
    let loaded = match args.config.load() {
        Ok(loaded) => loaded,
        Err(err) => {
            let _ = writeln!(stderr, "error: {err:#}");
            return Ok(ExitCode::from(2));
        }
    };
    if !args.quiet {
        for warning in loaded.config.warnings() {
            let _ = writeln!(stderr, "warning: {warning}");
        }
    }
    let (input_name, text) = match read_input(&args.file) {
        Ok(input) => input,
        Err(err) => {
            let _ = writeln!(stderr, "error: {err:#}");
            return Ok(ExitCode::from(2));
        }
    };
    let stream = match crate::yaml::Stream::parse(&text) {
        Ok(stream) => stream,
        Err(err) => {
            let _ = writeln!(stderr, "error: {input_name}: {err}");
            return Ok(ExitCode::from(2));
        }
    };

    let config = &loaded.config;
    let mut decided = Vec::new();
    let mut errors = Vec::new();
    let mut replaced: Vec<Option<Value>> = Vec::new();
    for doc in stream.documents() {
        let new = doc.value.as_ref().and_then(|value| {
            match manifest::inject_document(config, value, loaded.native, &mut decided) {
                Ok(out) => (&out != value).then_some(out),
                Err(err) => {
                    errors.push(format!("{input_name}: {err}"));
                    None
                }
            }
        });
        replaced.push(new);
    }

    if !args.quiet {
        for d in &decided {
            summarize(stderr, config, loaded.native, d);
        }
    }
    if !errors.is_empty() {
        for e in &errors {
            let _ = writeln!(stderr, "error: {e}");
        }
        return Ok(ExitCode::from(1));
    }
    let injected_any = decided
        .iter()
        .any(|d| matches!(d.decision, Decision::Injected { .. }));
    if loaded.native_auto && injected_any && !args.quiet {
        let _ = writeln!(
            stderr,
            "note: native sidecars are `auto` and there is no cluster to ask: classic sidecars injected; pass --native-sidecars true for clusters on Kubernetes {}.{} or later",
            crate::cluster::DEFAULT_MIN_KUBELET.major,
            crate::cluster::DEFAULT_MIN_KUBELET.minor,
        );
    }

    let out = match args.output {
        Format::Yaml => {
            let mut next = replaced.into_iter();
            stream.write(|_| next.next().flatten())
        }
        Format::Json => {
            let mut out = String::new();
            for (doc, new) in stream.documents().zip(replaced) {
                if let Some(value) = new.or_else(|| doc.value.clone()) {
                    out.push_str(&serde_json::to_string_pretty(&value)?);
                    out.push('\n');
                }
            }
            out
        }
    };
    match &args.output_file {
        None => {
            std::io::stdout()
                .write_all(out.as_bytes())
                .context("cannot write to standard output")?;
        }
        Some(path) => write_atomically(path, &out)?,
    }
    Ok(ExitCode::SUCCESS)
}

/// One line for what the injector did with a workload, then the warnings the webhook would
/// return for its pods: the engine's own, then the guardrail findings.
fn summarize(out: &mut impl Write, config: &Config, native: bool, d: &Decided) {
    let object = &d.object;
    match &d.decision {
        Decision::Injected { warnings, .. } => {
            let _ = writeln!(out, "injected {object}");
            for w in warnings {
                let _ = writeln!(out, "warning: {object}: {w}");
            }
            if let Some(pod) = d.injected_template() {
                let ctx = PodContext {
                    owner_kind: Some(d.kind.clone()),
                    ..PodContext::for_config(config, native, Some(d.namespace.clone()))
                };
                for f in crate::analyze::injected_pod_warnings(config, pod, &ctx, warnings) {
                    let _ = writeln!(out, "warning: {object}: {}", f.warning_text());
                }
            }
        }
        Decision::Skipped(reason) => {
            let _ = writeln!(out, "skipped {object}: {reason}");
        }
        // Refusals and failures are printed as errors.
        Decision::Denied(_) | Decision::Failed(_) | Decision::NoPodTemplate { .. } => {}
    }
}

/// The input's name for messages, and its text.
pub(crate) fn read_input(file: &str) -> anyhow::Result<(String, String)> {
    if file == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("cannot read standard input")?;
        Ok(("standard input".to_string(), text))
    } else {
        Ok((file.to_string(), read_file(Path::new(file), "manifest")?))
    }
}

/// Writes through a temporary file beside the target and renames it, so a failure never leaves
/// a half-written manifest behind.
fn write_atomically(path: &Path, text: &str) -> anyhow::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "output".into());
    let tmp = dir.join(format!(".{file_name}.{}.tmp", std::process::id()));
    std::fs::write(&tmp, text).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| {
        let _ = std::fs::remove_file(&tmp);
        format!("cannot write {}", path.display())
    })
}
