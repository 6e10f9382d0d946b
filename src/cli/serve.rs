//! `sidecar-injector serve`: the HTTPS admission webhook.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use tracing::warn;

use crate::config::NativeMode;
use crate::server::{self, CertFiles, Server, Settings};

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Address of the HTTPS webhook.
    #[arg(
        long = "addr",
        alias = "listen",
        env = "SIDECAR_INJECTOR_ADDR",
        default_value = "0.0.0.0:8443"
    )]
    pub listen: SocketAddr,

    /// Address of the plain-HTTP admin endpoints (/healthz, /readyz, /metrics).
    #[arg(
        long = "admin-addr",
        alias = "admin-listen",
        env = "SIDECAR_INJECTOR_ADMIN_ADDR",
        default_value = "0.0.0.0:8080"
    )]
    pub admin_listen: SocketAddr,

    /// PEM certificate chain served by the webhook (leaf first).
    #[arg(
        long = "tls-cert-file",
        alias = "tls-cert",
        env = "SIDECAR_INJECTOR_TLS_CERT_FILE",
        default_value = "/etc/sidecar-injector/certs/tls.crt"
    )]
    pub tls_cert: PathBuf,

    /// PEM private key of the certificate.
    #[arg(
        long = "tls-key-file",
        alias = "tls-key",
        env = "SIDECAR_INJECTOR_TLS_KEY_FILE",
        default_value = "/etc/sidecar-injector/certs/tls.key"
    )]
    pub tls_key: PathBuf,

    /// Native sidecars (`true`, `false` or `auto`); overrides
    /// `values.sidecarInjectorWebhook.nativeSidecars` of the config.
    #[arg(long, env = "SIDECAR_INJECTOR_NATIVE_SIDECARS")]
    pub native_sidecars: Option<NativeMode>,

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

    /// Log level or filter, in `RUST_LOG` syntax (e.g. `info`, `sidecar_injector=debug`).
    #[arg(
        long = "log-level",
        alias = "log",
        env = "SIDECAR_INJECTOR_LOG_LEVEL",
        default_value = "info"
    )]
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
        settings.native_sidecars = self.native_sidecars;
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

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command};

    fn serve(args: &[&str]) -> ServeArgs {
        let argv = ["sidecar-injector", "serve"].iter().chain(args);
        match Cli::try_parse_from(argv) {
            Ok(Cli {
                command: Command::Serve(args),
            }) => args,
            Ok(other) => panic!("not serve: {other:?}"),
            Err(err) => panic!("{err}"),
        }
    }

    #[test]
    fn flags_reach_the_settings() {
        let args = serve(&[
            "--addr=127.0.0.1:9443",
            "--admin-addr=127.0.0.1:9090",
            "--tls-cert-file=/certs/tls.crt",
            "--tls-key-file=/certs/tls.key",
            "--config-dir=/etc/injector",
            "--native-sidecars=true",
            "--max-body-bytes=1024",
            "--log-level=sidecar_injector=debug",
            "--log-format=json",
            "--shutdown-grace=2",
            "--drain-timeout=3",
        ]);
        let s = args.settings();
        assert_eq!(s.listen, "127.0.0.1:9443".parse().unwrap());
        assert_eq!(s.admin_listen, Some("127.0.0.1:9090".parse().unwrap()));
        assert_eq!(s.tls.cert, PathBuf::from("/certs/tls.crt"));
        assert_eq!(s.tls.key, PathBuf::from("/certs/tls.key"));
        assert_eq!(s.config_dir, Some(PathBuf::from("/etc/injector")));
        assert_eq!(s.native_sidecars, Some(NativeMode::Enabled));
        assert_eq!(s.max_body_bytes, 1024);
        assert_eq!(s.shutdown_grace, Duration::from_secs(2));
        assert_eq!(s.drain_timeout, Duration::from_secs(3));
        assert_eq!(args.log, "sidecar_injector=debug");
        assert_eq!(args.log_format, LogFormat::Json);
    }

    #[test]
    fn defaults_leave_the_config_in_charge() {
        let s = serve(&[]).settings();
        assert_eq!(s.native_sidecars, None);
        assert_eq!(s.config_dir, None);
        assert_eq!(s.max_body_bytes, server::DEFAULT_MAX_BODY_BYTES);
    }

    #[test]
    fn bad_values_are_refused() {
        for bad in [
            &["--native-sidecars=maybe"][..],
            &["--addr=nowhere"],
            &["--reload-interval=0"],
            &["--log-format=xml"],
        ] {
            let argv = ["sidecar-injector", "serve"].iter().chain(bad);
            assert!(Cli::try_parse_from(argv).is_err(), "{bad:?} was accepted");
        }
    }
}
