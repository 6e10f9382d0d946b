//! `sidecar-injector inject`.

use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct InjectArgs {}

pub fn run(args: InjectArgs) -> anyhow::Result<ExitCode> {
    let _ = args;
    anyhow::bail!("`inject` is not available in this build yet")
}
