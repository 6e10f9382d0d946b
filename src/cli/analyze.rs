//! `sidecar-injector analyze`: the guardrail findings over manifests, for people and for CI.
//!
//! Each workload first goes through the injector's decision, as `inject` and the webhook make
//! it (the same configuration flags as `inject`): skipped workloads get one `info` line saying
//! why, refused ones an `error` with the webhook's message, and only injected ones are checked.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use serde_json::Value;

use super::inject::ConfigArgs;
use crate::analyze::{self, AnalyzeOptions, Finding, PodContext, Severity};

const EXIT_CODES: &str = "\
Exit codes:
  0  no finding reaches --fail-on
  1  a finding reaches --fail-on
  2  an input, the configuration or the arguments cannot be read (the message names the file,
     document and line); the other inputs are still analyzed and reported";

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FailOn {
    Info,
    Warning,
    Error,
    Never,
}

#[derive(Debug, clap::Args)]
#[command(after_help = EXIT_CODES)]
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
    /// The mesh holds application containers until the proxy is ready
    /// (`holdApplicationUntilProxyStarts`), whatever the mesh config says.
    #[arg(long)]
    pub hold_application_until_proxy_starts: bool,
    /// The cluster uses istio-cni instead of the istio-init container, whatever the values say.
    #[arg(long)]
    pub cni: bool,
    /// The proxy image is the distroless variant, whatever the values say.
    #[arg(long)]
    pub distroless: bool,
    /// Leave out a finding by id. Repeatable.
    #[arg(long = "disable", value_name = "ID")]
    pub disabled: Vec<String>,
    /// The injector's configuration, as for `inject`; the config's `findings.disabled` list
    /// applies too.
    #[command(flatten)]
    pub config: ConfigArgs,
}

pub fn run(args: AnalyzeArgs) -> anyhow::Result<ExitCode> {
    match analyze(&args) {
        Ok((failed, unreadable)) => Ok(if unreadable {
            ExitCode::from(2)
        } else if failed {
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

/// Returns whether a finding reached `--fail-on`, and whether an input could not be read.
fn analyze(args: &AnalyzeArgs) -> anyhow::Result<(bool, bool)> {
    for id in &args.disabled {
        if analyze::kind(id).is_none() {
            let known: Vec<&str> = analyze::CATALOGUE.iter().map(|k| k.id).collect();
            anyhow::bail!(
                "unknown finding id {id:?} in --disable; known: {}",
                known.join(", ")
            );
        }
    }
    let loaded = args.config.load()?;
    let config = &loaded.config;
    for warning in config.warnings() {
        eprintln!("warning: {warning}");
    }
    let from_config = PodContext::for_config(config, loaded.native, None);
    let opts = AnalyzeOptions {
        native_sidecars: loaded.native,
        hold_application: args.hold_application_until_proxy_starts || from_config.hold_application,
        cni: args.cni || from_config.cni,
        distroless_proxy: args.distroless || from_config.distroless_proxy,
        ..AnalyzeOptions::default()
    };

    let (docs, unreadable) = read_inputs(&args.files);
    let findings: Vec<Finding> = analyze::analyze_documents(&docs, config, &opts)
        .into_iter()
        .filter(|f| !args.disabled.iter().any(|d| d == f.id))
        .filter(|f| config.finding_enabled(f.id))
        .collect();

    let text = match args.output {
        Output::Json => serde_json::to_string_pretty(&findings)? + "\n",
        Output::Text => render_text(&findings),
    };
    std::io::stdout().lock().write_all(text.as_bytes())?;

    let threshold = match args.fail_on {
        FailOn::Info => Some(Severity::Info),
        FailOn::Error => Some(Severity::Error),
        FailOn::Warning => Some(Severity::Warning),
        FailOn::Never => None,
    };
    let failed = threshold.is_some_and(|t| findings.iter().any(|f| f.severity >= t));
    Ok((failed, unreadable > 0))
}

/// All documents of all inputs, in the order given (directory entries sorted by path), and
/// how many inputs could not be read. An input that cannot be read is reported on standard
/// error and left out; the others are still read.
fn read_inputs(inputs: &[PathBuf]) -> (Vec<Value>, usize) {
    let mut docs = Vec::new();
    let mut unreadable = 0;
    let mut read = |source: &str, text: anyhow::Result<String>| match text
        .and_then(|text| parse(source, &text))
    {
        Ok(found) => docs.extend(found),
        Err(err) => {
            eprintln!("error: {err:#}");
            unreadable += 1;
        }
    };
    for input in inputs {
        if input.as_os_str() == "-" {
            let mut text = String::new();
            let result = std::io::stdin()
                .read_to_string(&mut text)
                .map(|_| text)
                .context("<stdin>: cannot read");
            read("<stdin>", result);
        } else if input.is_dir() {
            match manifest_files(input) {
                Ok(files) => {
                    for file in files {
                        read(&file.display().to_string(), read_file(&file));
                    }
                }
                Err(err) => read(&input.display().to_string(), Err(err)),
            }
        } else {
            read(&input.display().to_string(), read_file(input));
        }
    }
    (docs, unreadable)
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
