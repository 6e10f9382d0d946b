//! `sidecar-injector outdated`: the running pods whose sidecar differs from what the injector
//! would inject for them now, grouped by workload, with why and what to do.
//!
//! Exit codes: 0 (and 1 with `--fail-on outdated` when a workload is stale), 2 when the cluster
//! cannot be read or the arguments are wrong.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, bail};

use crate::cluster::upgrade::{self as gather, Scope, valid_name};
use crate::cluster::{self, Version};
use crate::config::{Config, NativeMode, Sources};
use crate::upgrade::Target;
use crate::upgrade::report::Report;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FailOn {
    /// Exit with 1 when any workload has a stale pod.
    Outdated,
    Never,
}

/// Which cluster, which namespaces, and which injector configuration to judge against; shared
/// by `outdated` and `rollout`.
#[derive(Debug, Clone, clap::Args)]
pub struct TargetArgs {
    /// The kubeconfig context (default: the current context, or the in-cluster service
    /// account).
    #[arg(long, value_name = "NAME")]
    pub context: Option<String>,

    /// The namespace to look in (default: the context's namespace).
    #[arg(
        short = 'n',
        long,
        value_name = "NAMESPACE",
        conflicts_with = "all_namespaces"
    )]
    pub namespace: Option<String>,

    /// Look in every namespace.
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,

    /// The injector's ConfigMap, `[NAMESPACE/]NAME`: its configuration is what pods are judged
    /// against, and its namespace is the injector's own (never injected). The chart names it
    /// after the release, `-<revision>` appended for a revision.
    #[arg(
        long,
        value_name = "[NAMESPACE/]NAME",
        default_value = "sidecar-injector/sidecar-injector"
    )]
    pub configmap: String,

    /// Judge against a ConfigMap directory on disk (files `config`, `values`, `mesh`) instead
    /// of the cluster's ConfigMap.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["config", "values", "mesh"])]
    pub config_dir: Option<PathBuf>,

    /// The `config` key, replacing the embedded one (like `inject`); with --values and --mesh,
    /// judge against these files instead of the cluster's ConfigMap.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Istio Helm values, deep-merged over the embedded defaults (like `inject`).
    #[arg(long, value_name = "FILE")]
    pub values: Option<PathBuf>,

    /// MeshConfig, deep-merged over the embedded defaults (like `inject`).
    #[arg(long, value_name = "FILE")]
    pub mesh: Option<PathBuf>,

    /// Native sidecars as the webhook decides them (`true`, `false`, `auto`); default: the
    /// `--native-sidecars` of the injector's Deployment (named as the ConfigMap), else the
    /// configuration's `sidecarInjectorWebhook.nativeSidecars`. `auto` reads the nodes'
    /// kubelet versions, as the webhook does.
    #[arg(long, value_name = "true|false|auto")]
    pub native_sidecars: Option<NativeMode>,

    /// Lowest kubelet version for native sidecars `auto` (as `serve`'s flag); default: the
    /// injector Deployment's, else 1.33.
    #[arg(long, value_name = "VERSION")]
    pub native_sidecars_min_kubelet: Option<Version>,
}

impl TargetArgs {
    /// `(namespace, name)` of the ConfigMap.
    pub fn configmap(&self) -> anyhow::Result<(String, String)> {
        let (ns, name) = match self.configmap.split_once('/') {
            Some((ns, name)) => (ns.to_string(), name.to_string()),
            None => ("sidecar-injector".to_string(), self.configmap.clone()),
        };
        if !valid_name(&ns) || !valid_name(&name) {
            bail!(
                "--configmap {:?}: expected [NAMESPACE/]NAME with Kubernetes names (lowercase letters, digits, '-', '.')",
                self.configmap
            );
        }
        Ok((ns, name))
    }

    fn local(&self) -> bool {
        self.config_dir.is_some()
            || self.config.is_some()
            || self.values.is_some()
            || self.mesh.is_some()
    }

    /// The namespaces to look in.
    pub fn scope(&self, client: &kube::Client) -> anyhow::Result<Scope> {
        if self.all_namespaces {
            return Ok(Scope::All);
        }
        let ns = self
            .namespace
            .clone()
            .unwrap_or_else(|| client.default_namespace().to_string());
        if !valid_name(&ns) {
            bail!("{ns:?} is not a namespace name (lowercase letters, digits, '-')");
        }
        Ok(Scope::Namespace(ns))
    }

    /// The configuration pods are judged against, and where it came from.
    pub async fn load_config(&self, client: &kube::Client) -> anyhow::Result<(Config, String)> {
        if let Some(dir) = &self.config_dir {
            let config = Config::load_dir(dir)
                .with_context(|| format!("loading the configuration in {}", dir.display()))?;
            return Ok((config, dir.display().to_string()));
        }
        if self.local() {
            let mut sources = Sources::embedded();
            let read = |path: &Path, what: &str| {
                std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read the {what} file {}", path.display()))
            };
            if let Some(p) = &self.config {
                sources.config = read(p, "config")?;
            }
            if let Some(p) = &self.values {
                sources.values = read(p, "values")?;
            }
            if let Some(p) = &self.mesh {
                sources.mesh = read(p, "mesh")?;
            }
            let config = Config::from_sources(&sources).context("invalid configuration")?;
            return Ok((config, "the files given".into()));
        }
        let (ns, name) = self.configmap()?;
        let config = gather::config_map(client, &ns, &name).await?;
        Ok((config, format!("ConfigMap {ns}/{name}")))
    }

    /// Whether a pod created now gets a native sidecar: the flag, else what the injector runs
    /// with (its Deployment's flags, else its configuration).
    pub async fn native(&self, client: &kube::Client, config: &Config) -> anyhow::Result<bool> {
        let (ns, name) = self.configmap()?;
        let running = match (self.native_sidecars, self.native_sidecars_min_kubelet) {
            (Some(_), Some(_)) => None,
            _ => gather::injector_flags(client, &ns, &name).await,
        };
        let (running_mode, running_min) = running.unwrap_or((None, None));
        let mode = self
            .native_sidecars
            .or(running_mode)
            .unwrap_or_else(|| config.native_mode());
        let min = self
            .native_sidecars_min_kubelet
            .or(running_min)
            .unwrap_or(cluster::DEFAULT_MIN_KUBELET);
        match mode {
            NativeMode::Enabled => Ok(true),
            NativeMode::Disabled => Ok(false),
            NativeMode::Auto => Ok(gather::native_from_nodes(client, min).await?),
        }
    }

    /// Everything `outdated` needs, read from the cluster: the report.
    pub async fn report(&self, client: &kube::Client) -> anyhow::Result<Report> {
        let scope = self.scope(client)?;
        let (config, _) = self.load_config(client).await?;
        let native = self.native(client, &config).await?;
        let (injector_namespace, _) = self.configmap()?;
        let target = Target {
            config: &config,
            native_sidecars: native,
            injector_namespace: Some(injector_namespace),
        };
        Ok(gather::outdated(client, &scope, &target).await?)
    }
}

#[derive(Debug, clap::Args)]
pub struct OutdatedArgs {
    #[command(flatten)]
    pub target: TargetArgs,

    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Output::Text)]
    pub output: Output,

    /// `outdated`: exit with 1 when a workload has a stale pod (for CI and cron jobs).
    #[arg(long, value_enum, default_value_t = FailOn::Never)]
    pub fail_on: FailOn,
}

pub fn run(args: OutdatedArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let result = runtime.block_on(async {
        let client = cluster::client_for(args.target.context.as_deref()).await?;
        args.target.report(&client).await
    });
    let report = match result {
        Ok(report) => report,
        Err(err) => {
            eprintln!("error: {err:#}");
            return Ok(ExitCode::from(2));
        }
    };
    let text = match args.output {
        Output::Text => report.text(),
        Output::Json => serde_json::to_string_pretty(&report.json())? + "\n",
    };
    std::io::stdout()
        .lock()
        .write_all(text.as_bytes())
        .context("cannot write to standard output")?;
    Ok(
        if args.fail_on == FailOn::Outdated && !report.stale.is_empty() {
            ExitCode::from(1)
        } else {
            ExitCode::SUCCESS
        },
    )
}
