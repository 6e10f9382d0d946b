//! The command line: `serve`, `inject`, `analyze`, `outdated`, `rollout`.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

pub mod analyze;
pub mod inject;
pub mod outdated;
pub mod rollout;
pub mod serve;

/// Istio sidecar injector: a Kubernetes mutating admission webhook and a manual injection tool.
#[derive(Debug, Parser)]
#[command(name = "sidecar-injector", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTPS admission webhook server.
    Serve(serve::ServeArgs),
    /// Inject the sidecar into Kubernetes manifests (like `istioctl kube-inject`).
    Inject(inject::InjectArgs),
    /// Check manifests for the pitfalls of running under a sidecar mesh.
    Analyze(analyze::AnalyzeArgs),
    /// List the running pods whose sidecar differs from what would be injected now, by
    /// workload, with why.
    Outdated(outdated::OutdatedArgs),
    /// Restart Deployments, StatefulSets and DaemonSets at a safe pace to give their pods the
    /// current sidecar.
    Rollout(rollout::RolloutArgs),
}

impl Cli {
    /// Runs the chosen subcommand and returns the process exit code.
    pub fn run(self) -> anyhow::Result<ExitCode> {
        match self.command {
            Command::Serve(args) => serve::run(args),
            Command::Inject(args) => inject::run(args),
            Command::Analyze(args) => analyze::run(args),
            Command::Outdated(args) => outdated::run(args),
            Command::Rollout(args) => rollout::run(args),
        }
    }
}
