//! `sidecar-injector inject`: manual injection of manifests, like `istioctl kube-inject`, with
//! the same engine the webhook runs.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};

use crate::config::{Config, NativeMode, Policy, Sources};
use crate::manifest::{self, Event};

#[derive(Debug, clap::Args)]
pub struct InjectArgs {
    /// Manifest to inject (multi-document YAML); `-` reads standard input.
    #[arg(short = 'f', long = "filename", value_name = "FILE")]
    pub file: String,

    /// Where to write the result; standard output by default. Written only when every document
    /// injected without error.
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub output: Option<PathBuf>,

    /// The `config` key (policy, templates, aliases, ...): replaces the embedded one.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Istio Helm values (YAML or JSON), deep-merged over the embedded defaults.
    #[arg(long, value_name = "FILE")]
    pub values: Option<PathBuf>,

    /// MeshConfig (YAML), deep-merged over the embedded defaults.
    #[arg(long, value_name = "FILE")]
    pub mesh: Option<PathBuf>,

    /// Put istio-proxy in initContainers with restartPolicy Always (Kubernetes 1.29+). Defaults
    /// to the values' sidecarInjectorWebhook.nativeSidecars; `auto` there means false here, as
    /// there is no cluster to ask.
    #[arg(long, value_name = "true|false")]
    pub native_sidecars: Option<bool>,

    /// Control-plane revision to inject for (sets values.revision).
    #[arg(long, value_name = "REVISION")]
    pub revision: Option<String>,
}

fn read_file(path: &Path, what: &str) -> anyhow::Result<String> {
    std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the {what} file {}", path.display()))
}

/// Builds the configuration from the flags over the embedded defaults.
fn load_config(args: &InjectArgs) -> anyhow::Result<Config> {
    let mut sources = Sources::embedded();
    if let Some(path) = &args.config {
        sources.config = read_file(path, "config")?;
    }
    if let Some(path) = &args.values {
        sources.values = read_file(path, "values")?;
    }
    if let Some(path) = &args.mesh {
        sources.mesh = read_file(path, "mesh")?;
    }
    if let Some(revision) = &args.revision {
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
    // Like istioctl kube-inject: running the command is the request to inject, so the policy
    // does not hold a workload back; an explicit opt-out and the selectors still do.
    config.injection.policy = Policy::Enabled;
    Ok(config)
}

pub fn run(args: InjectArgs) -> anyhow::Result<ExitCode> {
    let config = load_config(&args)?;
    let native = match args.native_sidecars {
        Some(v) => v,
        None => config.native_mode() == NativeMode::Enabled,
    };
    let auto_note = args.native_sidecars.is_none() && config.native_mode() == NativeMode::Auto;

    let (input_name, text) = if args.file == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("cannot read standard input")?;
        ("standard input".to_string(), text)
    } else {
        let path = Path::new(&args.file);
        (args.file.clone(), read_file(path, "manifest")?)
    };
    let docs =
        crate::yaml::parse_documents(&text).map_err(|e| anyhow::anyhow!("{input_name}: {e}"))?;

    let mut events = Vec::new();
    let mut out = Vec::with_capacity(docs.len());
    let mut errors = Vec::new();
    for doc in &docs {
        match manifest::inject_document(&config, doc, native, &mut events) {
            Ok(v) => out.push(v),
            Err(e) => errors.push(format!("{input_name}: {e}")),
        }
    }
    let stderr = &mut std::io::stderr();
    for event in &events {
        match event {
            Event::Skipped { object, reason } => {
                let _ = writeln!(stderr, "skipped {object}: {reason}");
            }
            Event::Injected { object, warnings } => {
                for w in warnings {
                    let _ = writeln!(stderr, "warning: {object}: {w}");
                }
            }
        }
    }
    if !errors.is_empty() {
        bail!("{}", errors.join("\n"));
    }
    if auto_note && events.iter().any(|e| matches!(e, Event::Injected { .. })) {
        let _ = writeln!(
            stderr,
            "note: native sidecars are `auto` and there is no cluster to ask: classic sidecars injected; pass --native-sidecars true for clusters on Kubernetes 1.33 or later"
        );
    }

    let yaml = crate::yaml::to_documents(&out);
    match &args.output {
        None => {
            std::io::stdout()
                .write_all(yaml.as_bytes())
                .context("cannot write to standard output")?;
        }
        Some(path) => write_atomically(path, &yaml)?,
    }
    Ok(ExitCode::SUCCESS)
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
