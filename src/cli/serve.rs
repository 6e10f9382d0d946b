//! `sidecar-injector serve`: the HTTPS admission webhook.
//!
//! The serving certificate comes from one of three places: PEM files (a mounted Secret, the
//! default), `--tls-self-signed` (generated at start-up, for local use), or
//! `--self-managed-certs` (a CA and certificate the server keeps in a Secret itself).

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use tracing::{error, warn};

use crate::certs::{self, SelfManagedArgs};
use crate::cluster::{self, Version};
use crate::config::NativeMode;
use crate::server::self_signed::{self, SelfSigned};
use crate::server::{self, CertFiles, CertSource, Server, Settings};

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Address of the HTTPS webhook.
    #[arg(
        long = "addr",
        alias = "listen",
        env = "SIDECAR_INJECTOR_ADDR",
        default_value = "0.0.0.0:9443"
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

    /// PEM certificate chain served by the webhook (leaf first), reloaded when it changes.
    #[arg(
        long = "tls-cert-file",
        alias = "tls-cert",
        env = "SIDECAR_INJECTOR_TLS_CERT_FILE",
        default_value = "/etc/sidecar-injector/certs/tls.crt",
        conflicts_with = "self_managed_certs"
    )]
    pub tls_cert: PathBuf,

    /// PEM private key of the certificate.
    #[arg(
        long = "tls-key-file",
        alias = "tls-key",
        env = "SIDECAR_INJECTOR_TLS_KEY_FILE",
        default_value = "/etc/sidecar-injector/certs/tls.key",
        conflicts_with = "self_managed_certs"
    )]
    pub tls_key: PathBuf,

    /// Generate a CA and a serving certificate for localhost, 127.0.0.1 and ::1 at start-up
    /// (for local use; no certificate files needed).
    #[arg(
        long,
        conflicts_with_all = ["tls_cert", "tls_key", "self_managed_certs"]
    )]
    pub tls_self_signed: bool,

    /// Another DNS name or IP address for the self-signed certificate (repeatable).
    #[arg(
        long = "tls-dns-name",
        value_name = "NAME",
        requires = "tls_self_signed"
    )]
    pub tls_dns_names: Vec<String>,

    /// Where to write the self-signed certificate's CA (PEM) for clients to trust [default:
    /// sidecar-injector-ca-<pid>.crt in the system temp directory, one per server, removed when
    /// it exits].
    #[arg(long, value_name = "FILE", requires = "tls_self_signed")]
    pub tls_ca_out: Option<PathBuf>,

    /// Boxed: its many optional strings would make every `Command` as large as `serve`.
    #[command(flatten)]
    pub self_managed: Box<SelfManagedArgs>,

    /// Native sidecars (`true`, `false` or `auto`); overrides
    /// `values.sidecarInjectorWebhook.nativeSidecars` of the config. `auto` turns them on while
    /// every node's kubelet is at least --native-sidecars-min-kubelet.
    #[arg(long, env = "SIDECAR_INJECTOR_NATIVE_SIDECARS")]
    pub native_sidecars: Option<NativeMode>,

    /// Lowest kubelet version for native sidecars `auto` (e.g. 1.33, v1.33.2).
    #[arg(
        long,
        env = "SIDECAR_INJECTOR_NATIVE_SIDECARS_MIN_KUBELET",
        default_value = "1.33",
        value_name = "VERSION"
    )]
    pub native_sidecars_min_kubelet: Version,

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

    /// Open webhook connections at most; a connection over the limit is closed at once.
    #[arg(long, env = "SIDECAR_INJECTOR_MAX_CONNECTIONS", default_value_t = server::DEFAULT_MAX_CONNECTIONS as u64, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_connections: u64,

    /// Open admin connections at most; a connection over the limit is closed at once.
    #[arg(long, env = "SIDECAR_INJECTOR_ADMIN_MAX_CONNECTIONS", default_value_t = server::DEFAULT_ADMIN_MAX_CONNECTIONS as u64, value_parser = clap::value_parser!(u64).range(1..))]
    pub admin_max_connections: u64,

    /// Request body bytes held at once across all connections; a body that does not fit gets
    /// 503 with Retry-After. At least --max-body-bytes.
    #[arg(long, env = "SIDECAR_INJECTOR_BODY_BUDGET_BYTES", default_value_t = server::DEFAULT_BODY_BUDGET_BYTES)]
    pub body_budget_bytes: usize,

    /// Seconds a client gets to send a request body.
    #[arg(long, env = "SIDECAR_INJECTOR_READ_TIMEOUT", default_value_t = 10)]
    pub read_timeout: u64,

    /// Seconds from the TLS handshake to the first request on a connection (HTTP/1.1 or h2).
    #[arg(long, env = "SIDECAR_INJECTOR_FIRST_REQUEST_TIMEOUT", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub first_request_timeout: u64,

    /// Seconds a connection with no request in flight stays open (HTTP/1.1 keep-alive, h2);
    /// keep it above the client's own idle timeout (90 s for the API server).
    #[arg(long, env = "SIDECAR_INJECTOR_IDLE_TIMEOUT", default_value_t = server::DEFAULT_IDLE_TIMEOUT.as_secs(), value_parser = clap::value_parser!(u64).range(1..))]
    pub idle_timeout: u64,

    /// Reviews the engine works on at once (default: one per CPU).
    #[arg(long, env = "SIDECAR_INJECTOR_ENGINE_WORKERS", value_parser = clap::value_parser!(u64).range(1..))]
    pub engine_workers: Option<u64>,

    /// Reviews waiting for an engine worker at most; one more is answered 503 at once
    /// (default: 1024).
    #[arg(long, env = "SIDECAR_INJECTOR_ENGINE_QUEUE")]
    pub engine_queue: Option<u64>,

    /// Seconds a review may take before it is answered with an error; keep it below the
    /// webhook's `timeoutSeconds` (10 by default).
    #[arg(long, env = "SIDECAR_INJECTOR_REVIEW_DEADLINE", default_value_t = server::engine_pool::DEFAULT_DEADLINE.as_secs(), value_parser = clap::value_parser!(u64).range(1..))]
    pub review_deadline: u64,

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

    /// Log format (`plain` is accepted for `text`).
    #[arg(long, env = "SIDECAR_INJECTOR_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    #[value(alias = "plain")]
    Text,
    Json,
}

impl ServeArgs {
    /// The server settings. The certificate source is the files, or nothing yet when
    /// certificates are self-managed; `run` puts the generated pair in for `--tls-self-signed`.
    pub fn settings(&self) -> Settings {
        let tls = if self.self_managed.enabled {
            CertSource::Installed
        } else {
            CertSource::Files(CertFiles {
                cert: self.tls_cert.clone(),
                key: self.tls_key.clone(),
            })
        };
        let mut settings = Settings::new(self.listen, tls);
        settings.admin_listen = Some(self.admin_listen);
        settings.config_dir = self.config_dir.clone();
        settings.native_sidecars = self.native_sidecars;
        settings.native_min_kubelet = self.native_sidecars_min_kubelet;
        settings.reload_interval = Duration::from_secs(self.reload_interval);
        settings.max_body_bytes = self.max_body_bytes;
        settings.max_connections = usize::try_from(self.max_connections).unwrap_or(usize::MAX);
        settings.admin_max_connections =
            usize::try_from(self.admin_max_connections).unwrap_or(usize::MAX);
        settings.body_budget_bytes = self.body_budget_bytes;
        settings.read_timeout = Duration::from_secs(self.read_timeout);
        settings.first_request_timeout = Duration::from_secs(self.first_request_timeout);
        settings.idle_timeout = Duration::from_secs(self.idle_timeout);
        // hyper's HTTP/1.1 head timeout backs the idle timeout up; a shorter one would close
        // idle keep-alive connections first.
        settings.header_read_timeout = settings.idle_timeout;
        settings.shutdown_grace = Duration::from_secs(self.shutdown_grace);
        settings.drain_timeout = Duration::from_secs(self.drain_timeout);
        let size = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
        if let Some(workers) = self.engine_workers {
            settings.engine.workers = size(workers);
        }
        if let Some(queue) = self.engine_queue {
            settings.engine.queue = size(queue);
        }
        settings.engine.deadline = Duration::from_secs(self.review_deadline);
        settings
    }

    /// Where the self-signed CA goes. The default is per process: a second server on the same
    /// machine must not replace the CA that the first one's clients were told to trust.
    pub fn ca_out(&self) -> PathBuf {
        self.tls_ca_out.clone().unwrap_or_else(|| {
            std::env::temp_dir().join(format!("sidecar-injector-ca-{}.crt", std::process::id()))
        })
    }
}

pub fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    init_logging(&args.log, args.log_format)?;
    let self_managed = args.self_managed.options()?;
    let mut settings = args.settings();
    anyhow::ensure!(
        settings.body_budget_bytes >= settings.max_body_bytes,
        "--body-budget-bytes ({}) must be at least --max-body-bytes ({}), or a body of the \
         largest size could never be read",
        settings.body_budget_bytes,
        settings.max_body_bytes
    );
    let self_signed = if args.tls_self_signed {
        let made = self_signed::generate(&args.tls_dns_names)
            .context("cannot generate the self-signed certificate")?;
        settings.tls = CertSource::Pem {
            cert: made.cert_pem.clone(),
            key: made.key_pem.clone(),
        };
        Some(made)
    } else {
        None
    };
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(async {
        let server = Server::bind(settings).await?;
        // The default CA file is this process's own: removed when it exits.
        let own_ca_file = match &self_signed {
            Some(made) => {
                let path = args.ca_out();
                announce_self_signed(made, &path, server.local_addr(), args.tls_ca_out.is_none())?;
                args.tls_ca_out.is_none().then_some(path)
            }
            None => None,
        };
        let cert_task = match self_managed {
            Some(options) => {
                let client = cluster::client()
                    .await
                    .context("self-managed certificates need access to the cluster")?;
                let shared = server.shared();
                let origin = format!("Secret {}/{}", options.namespace, options.secret);
                Some(tokio::spawn(async move {
                    let installed = move |pair: certs::CertPair| {
                        shared.install_cert(&pair.cert_pem, &pair.key_pem, &origin);
                    };
                    if let Err(err) = certs::run(client, options, installed).await {
                        error!(error = %err, "self-managed certificates stopped; no certificate will be served");
                    }
                }))
            }
            None => None,
        };
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
        if let Some(task) = cert_task {
            task.abort();
        }
        if let Some(path) = own_ca_file {
            let _ = std::fs::remove_file(path);
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// Writes the CA for clients and tells the user how to call the server. The per-process
/// default file (in a directory everyone can write to) is created afresh, never written
/// through an existing file or link: one left by an earlier process with the same id is
/// removed first.
fn announce_self_signed(
    made: &SelfSigned,
    ca_out: &Path,
    addr: SocketAddr,
    own_file: bool,
) -> anyhow::Result<()> {
    let written = if own_file {
        let _ = std::fs::remove_file(ca_out);
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(ca_out)
            .and_then(|mut f| f.write_all(made.ca_pem.as_bytes()))
    } else {
        std::fs::write(ca_out, &made.ca_pem)
    };
    written.with_context(|| format!("cannot write the CA to {}", ca_out.display()))?;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "Self-signed certificate for {}; its CA is in {}",
        made.names.join(", "),
        ca_out.display()
    )?;
    writeln!(out, "Try: {}", self_signed::curl_example(addr, ca_out))?;
    out.flush()?;
    Ok(())
}

fn init_logging(filter: &str, format: LogFormat) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .with_context(|| format!("invalid log filter {filter:?}"))?;
    // Colour codes only for a terminal: log collectors keep them as literal bytes.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let result = match format {
        LogFormat::Text => builder.try_init(),
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

    fn files(s: &Settings) -> &CertFiles {
        match &s.tls {
            CertSource::Files(files) => files,
            other => panic!("not files: {other:?}"),
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
            "--native-sidecars=auto",
            "--native-sidecars-min-kubelet=v1.31",
            "--max-body-bytes=1024",
            "--max-connections=50",
            "--admin-max-connections=7",
            "--body-budget-bytes=4096",
            "--first-request-timeout=3",
            "--idle-timeout=95",
            "--log-level=sidecar_injector=debug",
            "--log-format=json",
            "--shutdown-grace=2",
            "--drain-timeout=3",
            "--engine-workers=3",
            "--engine-queue=5",
            "--review-deadline=4",
        ]);
        let s = args.settings();
        assert_eq!(s.listen, "127.0.0.1:9443".parse().unwrap());
        assert_eq!(s.admin_listen, Some("127.0.0.1:9090".parse().unwrap()));
        assert_eq!(files(&s).cert, PathBuf::from("/certs/tls.crt"));
        assert_eq!(files(&s).key, PathBuf::from("/certs/tls.key"));
        assert_eq!(s.config_dir, Some(PathBuf::from("/etc/injector")));
        assert_eq!(s.native_sidecars, Some(NativeMode::Auto));
        assert_eq!(s.native_min_kubelet, "1.31.0".parse().unwrap());
        assert_eq!(s.max_body_bytes, 1024);
        assert_eq!(s.max_connections, 50);
        assert_eq!(s.admin_max_connections, 7);
        assert_eq!(s.body_budget_bytes, 4096);
        assert_eq!(s.first_request_timeout, Duration::from_secs(3));
        assert_eq!(s.idle_timeout, Duration::from_secs(95));
        assert_eq!(s.header_read_timeout, Duration::from_secs(95));
        assert_eq!(s.shutdown_grace, Duration::from_secs(2));
        assert_eq!(s.drain_timeout, Duration::from_secs(3));
        assert_eq!(s.engine.workers, 3);
        assert_eq!(s.engine.queue, 5);
        assert_eq!(s.engine.deadline, Duration::from_secs(4));
        assert_eq!(args.log, "sidecar_injector=debug");
        assert_eq!(args.log_format, LogFormat::Json);
    }

    #[test]
    fn defaults_leave_the_config_in_charge() {
        let args = serve(&[]);
        let s = args.settings();
        assert_eq!(s.listen, "0.0.0.0:9443".parse().unwrap());
        assert_eq!(s.native_sidecars, None);
        assert_eq!(s.native_min_kubelet, cluster::DEFAULT_MIN_KUBELET);
        assert_eq!(s.config_dir, None);
        assert_eq!(s.max_body_bytes, server::DEFAULT_MAX_BODY_BYTES);
        assert_eq!(s.max_connections, server::DEFAULT_MAX_CONNECTIONS);
        assert_eq!(s.engine, server::EngineLimits::default());
        assert_eq!(
            files(&s).cert,
            PathBuf::from("/etc/sidecar-injector/certs/tls.crt")
        );
        assert_eq!(args.log_format, LogFormat::Text);
        assert!(!args.tls_self_signed);
    }

    #[test]
    fn plain_is_another_name_for_text() {
        assert_eq!(serve(&["--log-format=plain"]).log_format, LogFormat::Text);
        assert_eq!(serve(&["--log-format=text"]).log_format, LogFormat::Text);
    }

    #[test]
    fn self_signed_needs_no_files_and_takes_extra_names() {
        let args = serve(&[
            "--tls-self-signed",
            "--tls-dns-name=injector.test",
            "--tls-dns-name=10.0.0.5",
            "--tls-ca-out=/tmp/x/ca.crt",
        ]);
        assert!(args.tls_self_signed);
        assert_eq!(args.tls_dns_names, ["injector.test", "10.0.0.5"]);
        assert_eq!(args.ca_out(), PathBuf::from("/tmp/x/ca.crt"));
        let default = serve(&["--tls-self-signed"]).ca_out();
        assert!(default.starts_with(std::env::temp_dir()), "{default:?}");
        assert!(
            default.ends_with(format!("sidecar-injector-ca-{}.crt", std::process::id())),
            "{default:?}"
        );
    }

    #[test]
    fn self_managed_needs_no_files() {
        let args = serve(&[
            "--self-managed-certs",
            "--self-managed-secret=injector-tls",
            "--self-managed-webhook=injector",
            "--self-managed-namespace=mesh",
            "--self-managed-dns-name=injector.mesh.svc",
        ]);
        assert!(matches!(args.settings().tls, CertSource::Installed));
        let options = args.self_managed.options().unwrap().unwrap();
        assert_eq!(options.secret, "injector-tls");
        assert_eq!(options.namespace, "mesh");
    }

    #[test]
    fn bad_values_are_refused() {
        for bad in [
            &["--native-sidecars=maybe"][..],
            &["--native-sidecars-min-kubelet=latest"],
            &["--addr=nowhere"],
            &["--reload-interval=0"],
            &["--log-format=xml"],
            // Names for a certificate that is not generated.
            &["--tls-dns-name=x.test"],
            &["--tls-ca-out=/tmp/ca.crt"],
            // Two certificate sources at once.
            &["--tls-self-signed", "--tls-cert-file=/c.crt"],
            &[
                "--tls-self-signed",
                "--self-managed-certs",
                "--self-managed-secret=s",
                "--self-managed-webhook=w",
                "--self-managed-dns-name=d",
            ],
            &[
                "--tls-key-file=/k.key",
                "--self-managed-certs",
                "--self-managed-secret=s",
                "--self-managed-webhook=w",
                "--self-managed-dns-name=d",
            ],
        ] {
            let argv = ["sidecar-injector", "serve"].iter().chain(bad);
            assert!(Cli::try_parse_from(argv).is_err(), "{bad:?} was accepted");
        }
    }
}
