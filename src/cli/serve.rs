//! `sidecar-injector serve`: the HTTPS admission webhook.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use tracing::warn;

use crate::server::{self, CertFiles, Server, Settings};

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Address of the HTTPS webhook.
    #[arg(long, env = "SIDECAR_INJECTOR_LISTEN", default_value = "0.0.0.0:9443")]
    pub listen: SocketAddr,

    /// Address of the plain-HTTP admin endpoints (/healthz, /readyz, /metrics).
    #[arg(
        long,
        env = "SIDECAR_INJECTOR_ADMIN_LISTEN",
        default_value = "0.0.0.0:8080"
    )]
    pub admin_listen: SocketAddr,

    /// PEM certificate chain served by the webhook (leaf first).
    #[arg(
        long,
        env = "SIDECAR_INJECTOR_TLS_CERT",
        default_value = "/etc/sidecar-injector/certs/tls.crt"
    )]
    pub tls_cert: PathBuf,

    /// PEM private key of the certificate.
    #[arg(
        long,
        env = "SIDECAR_INJECTOR_TLS_KEY",
        default_value = "/etc/sidecar-injector/certs/tls.key"
    )]
    pub tls_key: PathBuf,

    /// Directory of the mounted ConfigMap (files `config`, `values`, `mesh`), reloaded on
    /// change. Without it the embedded default config is used.
    #[arg(long, env = "SIDECAR_INJECTOR_CONFIG_DIR")]
    pub config_dir: Option<PathBuf>,

    /// Seconds between checks of the certificate and config files for changes.
    #[arg(long, env = "SIDECAR_INJECTOR_RELOAD_INTERVAL", default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
    pub reload_interval: u64,

    /// Largest AdmissionReview body accepted, in bytes.
    #[arg(long, env = "SIDECAR_INJECTOR_MAX_BODY_BYTES", default_value_t = server::DEFAULT_MAX_BODY_BYTES)]
    pub max_body_bytes: usize,

    /// Seconds a client gets to send a request body.
    #[arg(long, env = "SIDECAR_INJECTOR_READ_TIMEOUT", default_value_t = 10)]
    pub read_timeout: u64,

    /// Seconds to keep serving, reported not ready, after SIGTERM.
    #[arg(long, env = "SIDECAR_INJECTOR_SHUTDOWN_GRACE", default_value_t = 5)]
    pub shutdown_grace: u64,

    /// Seconds open connections then get to finish.
    #[arg(long, env = "SIDECAR_INJECTOR_DRAIN_TIMEOUT", default_value_t = 20)]
    pub drain_timeout: u64,

    /// Log filter, in `RUST_LOG` syntax.
    #[arg(long, env = "SIDECAR_INJECTOR_LOG", default_value = "info")]
    pub log: String,

    /// Log format.
    #[arg(long, env = "SIDECAR_INJECTOR_LOG_FORMAT", value_enum, default_value_t = LogFormat::Plain)]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Plain,
    Json,
}

impl ServeArgs {
    pub fn settings(&self) -> Settings {
        let mut settings = Settings::new(
            self.listen,
            CertFiles {
                cert: self.tls_cert.clone(),
                key: self.tls_key.clone(),
            },
        );
        settings.admin_listen = Some(self.admin_listen);
        settings.config_dir = self.config_dir.clone();
        settings.reload_interval = Duration::from_secs(self.reload_interval);
        settings.max_body_bytes = self.max_body_bytes;
        settings.read_timeout = Duration::from_secs(self.read_timeout);
        settings.shutdown_grace = Duration::from_secs(self.shutdown_grace);
        settings.drain_timeout = Duration::from_secs(self.drain_timeout);
        settings
    }
}

pub fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    init_logging(&args.log, args.log_format)?;
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(async {
        let server = Server::bind(args.settings()).await?;
        server
            .run(async {
                server::shutdown::signal().await;
                // A second signal means the operator does not want to wait for the drain.
                tokio::spawn(async {
                    server::shutdown::signal().await;
                    warn!("second signal: exiting without draining");
                    std::process::exit(130);
                });
            })
            .await;
        Ok(ExitCode::SUCCESS)
    })
}

fn init_logging(filter: &str, format: LogFormat) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .with_context(|| format!("invalid log filter {filter:?}"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = match format {
        LogFormat::Plain => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    result.map_err(|err| anyhow::anyhow!("cannot set up logging: {err}"))
}
