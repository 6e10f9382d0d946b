//! `sidecar-injector analyze`: the guardrail findings over manifests, for people and for CI.
//!
//! Exit codes: 0 when no finding reaches `--fail-on`, 1 when one does, 2 when the input cannot
//! be read or the arguments are wrong (the message names the file, document and line).

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use serde_json::Value;

use crate::analyze::{self, AnalyzeOptions, Finding, Severity};
use crate::config::{Config, NativeMode};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FailOn {
    Error,
    Warning,
    Never,
}

#[derive(Debug, clap::Args)]
pub struct AnalyzeArgs {
    /// Manifest file, directory (searched recursively for *.yaml, *.yml, *.json) or `-` for
    /// stdin. Repeatable; all inputs are analyzed together, so a Service in one file is checked
    /// against the Deployment in another.
    #[arg(
        short = 'f',
        long = "filename",
        required = true,
        value_name = "FILE|DIR|-"
    )]
    pub files: Vec<PathBuf>,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Output::Text)]
    pub output: Output,
    /// Exit with 1 when a finding of this severity or worse is found.
    #[arg(long, value_enum, default_value_t = FailOn::Error)]
    pub fail_on: FailOn,
    /// Whether the injector runs istio-proxy as a native sidecar. Default: the config's
    /// setting when `--config` is given, else false.
    #[arg(long, value_name = "true|false")]
    pub native_sidecars: Option<bool>,
    /// The mesh holds application containers until the proxy is ready
    /// (`holdApplicationUntilProxyStarts`).
    #[arg(long)]
    pub hold_application_until_proxy_starts: bool,
    /// The cluster uses istio-cni instead of the istio-init container.
    #[arg(long)]
    pub cni: bool,
    /// The proxy image is the distroless variant.
    #[arg(long)]
    pub distroless: bool,
    /// Leave out a finding by id. Repeatable.
    #[arg(long = "disable", value_name = "ID")]
    pub disabled: Vec<String>,
    /// A ConfigMap directory (files `config`, `values`, `mesh`): its `findings.disabled` list
    /// and native-sidecar setting apply.
    #[arg(long, value_name = "DIR")]
    pub config: Option<PathBuf>,
}

pub fn run(args: AnalyzeArgs) -> anyhow::Result<ExitCode> {
    match analyze(&args) {
        Ok(failed) => Ok(if failed {
            ExitCode::from(1)
        } else {
            ExitCode::SUCCESS
        }),
        Err(err) => {
            eprintln!("error: {err:#}");
            Ok(ExitCode::from(2))
        }
    }
}

/// Returns whether a finding reached `--fail-on`.
fn analyze(args: &AnalyzeArgs) -> anyhow::Result<bool> {
    for id in &args.disabled {
        if analyze::kind(id).is_none() {
            let known: Vec<&str> = analyze::CATALOGUE.iter().map(|k| k.id).collect();
            anyhow::bail!(
                "unknown finding id {id:?} in --disable; known: {}",
                known.join(", ")
            );
        }
    }
    let config = match &args.config {
        Some(dir) => Some(
            Config::load_dir(dir).with_context(|| format!("loading config {}", dir.display()))?,
        ),
        None => None,
    };
    let native = args
        .native_sidecars
        .unwrap_or_else(|| config.as_ref().map(Config::native_mode) == Some(NativeMode::Enabled));
    let opts = AnalyzeOptions {
        native_sidecars: native,
        hold_application: args.hold_application_until_proxy_starts,
        cni: args.cni,
        distroless_proxy: args.distroless,
        ..AnalyzeOptions::default()
    };

    let docs = read_inputs(&args.files)?;
    let findings: Vec<Finding> = analyze::analyze_documents(&docs, &opts)
        .into_iter()
        .filter(|f| !args.disabled.iter().any(|d| d == f.id))
        .filter(|f| config.as_ref().is_none_or(|c| c.finding_enabled(f.id)))
        .collect();

    let text = match args.output {
        Output::Json => serde_json::to_string_pretty(&findings)? + "\n",
        Output::Text => render_text(&findings),
    };
    std::io::stdout().lock().write_all(text.as_bytes())?;

    let threshold = match args.fail_on {
        FailOn::Error => Some(Severity::Error),
        FailOn::Warning => Some(Severity::Warning),
        FailOn::Never => None,
    };
    Ok(threshold.is_some_and(|t| findings.iter().any(|f| f.severity >= t)))
}

/// All documents of all inputs, in the order given (directory entries sorted by path).
fn read_inputs(inputs: &[PathBuf]) -> anyhow::Result<Vec<Value>> {
    let mut docs = Vec::new();
    for input in inputs {
        if input.as_os_str() == "-" {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .context("reading stdin")?;
            docs.extend(parse("<stdin>", &text)?);
        } else if input.is_dir() {
            for file in manifest_files(input)? {
                let text = read_file(&file)?;
                docs.extend(parse(&file.display().to_string(), &text)?);
            }
        } else {
            let text = read_file(input)?;
            docs.extend(parse(&input.display().to_string(), &text)?);
        }
    }
    Ok(docs)
}

fn read_file(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("{}: cannot read", path.display()))
}

fn parse(source: &str, text: &str) -> anyhow::Result<Vec<Value>> {
    let docs = crate::yaml::parse_documents(text).map_err(|e| anyhow::anyhow!("{source}: {e}"))?;
    if let Some(i) = docs.iter().position(|d| !d.is_object()) {
        anyhow::bail!(
            "{source}: document {}: not a Kubernetes object (expected a mapping)",
            i + 1
        );
    }
    Ok(docs)
}

/// `*.yaml`, `*.yml` and `*.json` under `dir`, recursively, sorted so output is stable.
fn manifest_files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        let entries =
            std::fs::read_dir(&d).with_context(|| format!("{}: cannot read", d.display()))?;
        for entry in entries {
            let path = entry
                .with_context(|| format!("{}: cannot read", d.display()))?
                .path();
            if path.is_dir() {
                pending.push(path);
            } else if matches!(
                path.extension().and_then(|e| e.to_str()),
                Some("yaml" | "yml" | "json")
            ) {
                files.push(path);
            }
        }
    }
    files.sort();
    Ok(files)
}

/// Findings grouped by object, objects in order of their first finding:
///
/// ```text
/// Deployment/shop/web
///   error   job-never-completes  spec.template.spec.containers
///           This Job's pod never completes: ...
///           fix: Use native sidecars ...
/// ```
fn render_text(findings: &[Finding]) -> String {
    let mut out = String::new();
    let mut objects: Vec<&str> = Vec::new();
    for f in findings {
        if !objects.contains(&f.object.as_str()) {
            objects.push(&f.object);
        }
    }
    for object in objects {
        out.push_str(object);
        out.push('\n');
        for f in findings.iter().filter(|f| f.object == object) {
            out.push_str(&format!(
                "  {:<7} {}  {}\n",
                f.severity.as_str(),
                f.id,
                f.field
            ));
            out.push_str(&format!("          {}\n", f.message));
            out.push_str(&format!("          fix: {}\n", f.fix));
        }
        out.push('\n');
    }
    let count = |s: Severity, one: &str, many: &str| {
        let n = findings.iter().filter(|f| f.severity == s).count();
        format!("{n} {}", if n == 1 { one } else { many })
    };
    let ids: BTreeSet<&str> = findings.iter().map(|f| f.id).collect();
    match findings.len() {
        0 => out.push_str("no findings\n"),
        n => out.push_str(&format!(
            "{n} finding{}: {}, {}, {} ({})\n",
            if n == 1 { "" } else { "s" },
            count(Severity::Error, "error", "errors"),
            count(Severity::Warning, "warning", "warnings"),
            count(Severity::Info, "info", "info"),
            ids.into_iter().collect::<Vec<_>>().join(", ")
        )),
    }
    out
}
