//! The self-managed certificate loop: keeps the CA and serving certificate in a Secret shared by
//! every replica, and the CA bundle in the webhook configuration.
//!
//! Several replicas run this at once. Creating the Secret is create-if-absent: a replica that
//! loses the race (409 Conflict) reads the winner's Secret and uses it. Rotations replace the
//! Secret with its resourceVersion as a precondition, so of two replicas rotating at once one
//! wins and the other re-reads. Every replica re-reads the Secret each `resync`, so a rotation
//! made by one reaches all of them, and every replica keeps the caBundle current, so it heals
//! even when the replica that rotated died before publishing.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use time::OffsetDateTime;
use tracing::{info, warn};

use super::CertError;
use super::duration;
use super::material::{
    CA_CERT_KEY, CA_KEY_KEY, CERT_KEY, CertPair, KEY_KEY, Material, Policy, plan,
};

/// Flags of `serve` for self-managed certificates (flattened into its arguments).
#[derive(Debug, Clone, clap::Args)]
pub struct SelfManagedArgs {
    /// Create, store and rotate the webhook's own CA and serving certificate, and keep the
    /// webhook configuration's caBundle current (instead of reading certificate files).
    #[arg(
        id = "self_managed_certs",
        long = "self-managed-certs",
        requires_all = ["self_managed_secret", "self_managed_webhook", "self_managed_dns_name"]
    )]
    pub enabled: bool,

    /// Name of the Secret holding the CA and serving certificate.
    #[arg(
        id = "self_managed_secret",
        long = "self-managed-secret",
        value_name = "NAME"
    )]
    pub secret: Option<String>,

    /// Namespace of that Secret.
    #[arg(
        id = "self_managed_namespace",
        long = "self-managed-namespace",
        env = "POD_NAMESPACE",
        value_name = "NAMESPACE"
    )]
    pub namespace: Option<String>,

    /// Name of the MutatingWebhookConfiguration whose caBundle is kept current.
    #[arg(
        id = "self_managed_webhook",
        long = "self-managed-webhook",
        value_name = "NAME"
    )]
    pub webhook: Option<String>,

    /// DNS name the serving certificate covers (repeat for each name of the Service).
    #[arg(
        id = "self_managed_dns_name",
        long = "self-managed-dns-name",
        value_name = "NAME"
    )]
    pub dns_names: Vec<String>,

    /// Lifetime of the CA (e.g. 87600h, 3650d); it is replaced when a third is left.
    #[arg(
        id = "self_managed_ca_validity",
        long = "self-managed-ca-validity",
        value_name = "DURATION",
        default_value = "87600h",
        value_parser = duration::parse
    )]
    pub ca_validity: Duration,

    /// Lifetime of the serving certificate; it is renewed when a third is left.
    #[arg(
        id = "self_managed_cert_validity",
        long = "self-managed-cert-validity",
        value_name = "DURATION",
        default_value = "2160h",
        value_parser = duration::parse
    )]
    pub cert_validity: Duration,

    /// How often the Secret and the caBundle are checked.
    #[arg(
        id = "self_managed_resync",
        long = "self-managed-resync",
        value_name = "DURATION",
        default_value = "1m",
        value_parser = duration::parse
    )]
    pub resync: Duration,
}

/// Validated options of [`run`].
#[derive(Debug, Clone)]
pub struct Options {
    pub namespace: String,
    pub secret: String,
    pub webhook: String,
    pub policy: Policy,
    pub resync: Duration,
}

impl SelfManagedArgs {
    /// The options of [`run`], or `None` when self-managed certificates are off.
    pub fn options(&self) -> Result<Option<Options>, CertError> {
        if !self.enabled {
            return Ok(None);
        }
        let required = |v: &Option<String>, flag: &str| {
            v.clone()
                .filter(|s| !s.is_empty())
                .ok_or_else(|| CertError::Options(format!("{flag} is required")))
        };
        let webhook = required(&self.webhook, "--self-managed-webhook")?;
        let options = Options {
            namespace: required(
                &self.namespace,
                "--self-managed-namespace (or POD_NAMESPACE)",
            )?,
            secret: required(&self.secret, "--self-managed-secret")?,
            policy: Policy {
                dns_names: self.dns_names.clone(),
                ca_validity: self.ca_validity,
                cert_validity: self.cert_validity,
                // Several resyncs, so every replica has published a new CA before it signs.
                ca_publish_grace: self.resync * 5,
                ca_common_name: format!("{webhook}-ca"),
            },
            webhook,
            resync: self.resync,
        };
        options.policy.validate()?;
        Ok(Some(options))
    }
}

/// The Secret as read: its material and what a replace needs.
#[derive(Debug, Clone)]
struct Stored {
    material: Material,
    resource_version: String,
    type_: Option<String>,
}

/// The result of a conditional write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Write {
    Done,
    /// Someone else created or changed the Secret first.
    Conflict,
}

/// Where the material lives (the Secret) and where the CA bundle goes (the webhook
/// configuration); a trait so the race handling is tested without a cluster.
trait Store {
    async fn get(&self) -> Result<Option<Stored>, CertError>;
    async fn create(&self, material: &Material) -> Result<Write, CertError>;
    async fn replace(&self, material: &Material, previous: &Stored) -> Result<Write, CertError>;
    /// Sets every webhook's caBundle to `bundle`; returns whether anything changed.
    async fn publish(&self, bundle: &str) -> Result<bool, CertError>;
}

/// Conflicts tolerated in one pass before giving up until the next resync.
const MAX_CONFLICTS: usize = 5;

/// One pass: read, decide, write if needed (handling races), publish the CA bundle.
async fn sync_once(
    store: &impl Store,
    policy: &Policy,
    now: OffsetDateTime,
) -> Result<Material, CertError> {
    let mut conflicts = 0;
    let material = loop {
        let stored = store.get().await?;
        let decided = plan(stored.as_ref().map(|s| &s.material), now, policy)?;
        if !decided.changed {
            break decided.material;
        }
        let written = match &stored {
            None => store.create(&decided.material).await?,
            Some(previous) => store.replace(&decided.material, previous).await?,
        };
        match written {
            Write::Done => {
                info!(reasons = ?decided.reasons, "certificate Secret updated");
                break decided.material;
            }
            Write::Conflict => {
                conflicts += 1;
                if conflicts >= MAX_CONFLICTS {
                    return Err(CertError::Contended(conflicts));
                }
                info!("certificate Secret changed concurrently; using the other writer's");
            }
        }
    };
    if store.publish(&material.ca_bundle).await? {
        info!("webhook caBundle updated");
    }
    Ok(material)
}

/// Keeps the certificate current forever, calling `on_cert` with the serving certificate at
/// start and after every change. Errors are logged and retried; it returns only when the options
/// are invalid. Run it as a task and abort the task to stop it.
pub async fn run(
    client: kube::Client,
    options: Options,
    on_cert: impl Fn(CertPair),
) -> Result<(), CertError> {
    options.policy.validate()?;
    let store = KubeStore {
        secrets: Api::namespaced(client.clone(), &options.namespace),
        secret: options.secret.clone(),
        webhooks: Api::all(client),
        webhook: options.webhook.clone(),
    };
    run_with(&store, &options, on_cert, OffsetDateTime::now_utc).await
}

async fn run_with(
    store: &impl Store,
    options: &Options,
    on_cert: impl Fn(CertPair),
    clock: impl Fn() -> OffsetDateTime,
) -> Result<(), CertError> {
    let mut current: Option<CertPair> = None;
    let mut failures: u32 = 0;
    loop {
        let wait = match sync_once(store, &options.policy, clock()).await {
            Ok(material) => {
                failures = 0;
                let pair = material.pair();
                if current.as_ref() != Some(&pair) {
                    on_cert(pair.clone());
                    current = Some(pair);
                }
                options.resync
            }
            Err(err @ CertError::Options(_)) => return Err(err),
            Err(err) => {
                failures = failures.saturating_add(1);
                warn!(error = %err, failures, "self-managed certificate sync failed; retrying");
                // Quick retries at start-up (no certificate yet), never slower than resync.
                Duration::from_secs(1u64 << failures.min(6)).min(options.resync)
            }
        };
        tokio::time::sleep(wait).await;
    }
}

/// The Store backed by the API server.
struct KubeStore {
    secrets: Api<Secret>,
    secret: String,
    webhooks: Api<MutatingWebhookConfiguration>,
    webhook: String,
}

fn kube_err(action: &str) -> impl FnOnce(kube::Error) -> CertError + '_ {
    move |source| CertError::Kube {
        action: action.to_string(),
        source,
    }
}

fn is_conflict(err: &kube::Error) -> bool {
    matches!(err, kube::Error::Api(status) if status.code == 409)
}

fn material_from(secret: &Secret) -> Material {
    let data = secret.data.clone().unwrap_or_default();
    let text = |k: &str| {
        data.get(k)
            .map(|b| String::from_utf8_lossy(&b.0).into_owned())
            .unwrap_or_default()
    };
    Material {
        ca_bundle: text(CA_CERT_KEY),
        ca_key: text(CA_KEY_KEY),
        cert: text(CERT_KEY),
        key: text(KEY_KEY),
    }
}

fn data_of(material: &Material) -> BTreeMap<String, ByteString> {
    [
        (CA_CERT_KEY, &material.ca_bundle),
        (CA_KEY_KEY, &material.ca_key),
        (CERT_KEY, &material.cert),
        (KEY_KEY, &material.key),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
    .collect()
}

impl KubeStore {
    fn secret_object(&self, material: &Material, previous: Option<&Stored>) -> Secret {
        Secret {
            metadata: ObjectMeta {
                name: Some(self.secret.clone()),
                labels: Some(BTreeMap::from([(
                    "app.kubernetes.io/managed-by".to_string(),
                    "sidecar-injector".to_string(),
                )])),
                resource_version: previous.map(|p| p.resource_version.clone()),
                ..ObjectMeta::default()
            },
            // The type of an existing Secret is immutable; keep it.
            type_: match previous {
                Some(p) => p.type_.clone(),
                None => Some("kubernetes.io/tls".to_string()),
            },
            data: Some(data_of(material)),
            ..Secret::default()
        }
    }
}

impl Store for KubeStore {
    async fn get(&self) -> Result<Option<Stored>, CertError> {
        let secret = self
            .secrets
            .get_opt(&self.secret)
            .await
            .map_err(kube_err("reading the certificate Secret"))?;
        Ok(secret.map(|s| Stored {
            material: material_from(&s),
            resource_version: s.metadata.resource_version.clone().unwrap_or_default(),
            type_: s.type_.clone(),
        }))
    }

    async fn create(&self, material: &Material) -> Result<Write, CertError> {
        let object = self.secret_object(material, None);
        match self.secrets.create(&PostParams::default(), &object).await {
            Ok(_) => Ok(Write::Done),
            Err(e) if is_conflict(&e) => Ok(Write::Conflict),
            Err(e) => Err(kube_err("creating the certificate Secret")(e)),
        }
    }

    async fn replace(&self, material: &Material, previous: &Stored) -> Result<Write, CertError> {
        let object = self.secret_object(material, Some(previous));
        match self
            .secrets
            .replace(&self.secret, &PostParams::default(), &object)
            .await
        {
            Ok(_) => Ok(Write::Done),
            Err(e) if is_conflict(&e) => Ok(Write::Conflict),
            Err(e) => Err(kube_err("replacing the certificate Secret")(e)),
        }
    }

    async fn publish(&self, bundle: &str) -> Result<bool, CertError> {
        let config = self
            .webhooks
            .get_opt(&self.webhook)
            .await
            .map_err(kube_err("reading the webhook configuration"))?
            .ok_or_else(|| CertError::WebhookMissing(self.webhook.clone()))?;
        let want = ByteString(bundle.as_bytes().to_vec());
        let stale: Vec<String> = config
            .webhooks
            .unwrap_or_default()
            .into_iter()
            .filter(|w| w.client_config.ca_bundle.as_ref() != Some(&want))
            .map(|w| w.name)
            .collect();
        if stale.is_empty() {
            return Ok(false);
        }
        // A strategic merge patch merges `webhooks` by name: only the caBundle of the listed
        // entries changes, whatever else Helm or an operator changed meanwhile.
        let entries: Vec<_> = stale
            .iter()
            .map(|name| json!({"name": name, "clientConfig": {"caBundle": want}}))
            .collect();
        let patch = json!({"webhooks": entries});
        self.webhooks
            .patch(
                &self.webhook,
                &PatchParams::default(),
                &Patch::Strategic(&patch),
            )
            .await
            .map_err(kube_err("updating the webhook caBundle"))?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::sync::{Arc, Mutex};

    use clap::Parser;

    use super::*;

    /// An in-memory Secret with resourceVersion semantics, and a webhook bundle.
    #[derive(Default)]
    struct FakeStore {
        secret: RefCell<Option<Stored>>,
        version: RefCell<u64>,
        bundle: RefCell<String>,
        /// Material another replica writes just before our next create or replace.
        racer: RefCell<Option<Material>>,
        writes: RefCell<usize>,
    }

    impl FakeStore {
        fn put(&self, material: Material) {
            *self.version.borrow_mut() += 1;
            *self.secret.borrow_mut() = Some(Stored {
                material,
                resource_version: self.version.borrow().to_string(),
                type_: Some("kubernetes.io/tls".into()),
            });
        }

        fn race(&self) -> bool {
            match self.racer.borrow_mut().take() {
                Some(m) => {
                    self.put(m);
                    true
                }
                None => false,
            }
        }
    }

    impl Store for FakeStore {
        async fn get(&self) -> Result<Option<Stored>, CertError> {
            Ok(self.secret.borrow().clone())
        }
        async fn create(&self, material: &Material) -> Result<Write, CertError> {
            self.race();
            if self.secret.borrow().is_some() {
                return Ok(Write::Conflict);
            }
            *self.writes.borrow_mut() += 1;
            self.put(material.clone());
            Ok(Write::Done)
        }
        async fn replace(
            &self,
            material: &Material,
            previous: &Stored,
        ) -> Result<Write, CertError> {
            self.race();
            let current = self
                .secret
                .borrow()
                .as_ref()
                .map(|s| s.resource_version.clone());
            if current.as_deref() != Some(previous.resource_version.as_str()) {
                return Ok(Write::Conflict);
            }
            *self.writes.borrow_mut() += 1;
            self.put(material.clone());
            Ok(Write::Done)
        }
        async fn publish(&self, bundle: &str) -> Result<bool, CertError> {
            let changed = *self.bundle.borrow() != bundle;
            *self.bundle.borrow_mut() = bundle.to_string();
            Ok(changed)
        }
    }

    fn policy() -> Policy {
        Policy {
            dns_names: vec!["injector.ns.svc".into()],
            ca_validity: Duration::from_secs(300 * 86_400),
            cert_validity: Duration::from_secs(30 * 86_400),
            ca_publish_grace: Duration::from_secs(300),
            ca_common_name: "injector-ca".into(),
        }
    }

    fn t0() -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_800_000_000).expect("valid timestamp")
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime")
            .block_on(f)
    }

    #[test]
    fn first_replica_creates_the_secret_and_publishes_its_ca() {
        let store = FakeStore::default();
        let m = block_on(sync_once(&store, &policy(), t0())).expect("sync");
        assert_eq!(*store.writes.borrow(), 1);
        assert_eq!(
            store.secret.borrow().as_ref().map(|s| &s.material),
            Some(&m)
        );
        assert_eq!(*store.bundle.borrow(), m.ca_bundle);
        // A second pass changes nothing.
        let again = block_on(sync_once(&store, &policy(), t0())).expect("sync");
        assert_eq!(again, m);
        assert_eq!(*store.writes.borrow(), 1);
    }

    #[test]
    fn losing_the_create_race_adopts_the_winners_secret() {
        let store = FakeStore::default();
        let winner = plan(None, t0(), &policy()).expect("plan").material;
        *store.racer.borrow_mut() = Some(winner.clone());
        let m = block_on(sync_once(&store, &policy(), t0())).expect("sync");
        assert_eq!(
            m, winner,
            "the replica that lost uses the winner's certificate"
        );
        assert_eq!(*store.writes.borrow(), 0, "it never overwrote the winner");
        assert_eq!(*store.bundle.borrow(), winner.ca_bundle);
    }

    #[test]
    fn losing_a_rotation_race_adopts_the_other_rotation() {
        let store = FakeStore::default();
        let first = block_on(sync_once(&store, &policy(), t0())).expect("sync");
        let due = t0() + time::Duration::days(21);
        let other = plan(Some(&first), due, &policy()).expect("plan").material;
        *store.racer.borrow_mut() = Some(other.clone());
        let m = block_on(sync_once(&store, &policy(), due)).expect("sync");
        assert_eq!(m, other);
        assert_eq!(*store.writes.borrow(), 1, "only the first create was ours");
    }

    #[test]
    fn run_reports_the_certificate_once_and_again_after_rotation() {
        let store = FakeStore::default();
        let options = Options {
            namespace: "ns".into(),
            secret: "s".into(),
            webhook: "w".into(),
            policy: policy(),
            resync: Duration::from_millis(1),
        };
        let seen: Arc<Mutex<Vec<CertPair>>> = Arc::default();
        let ticks = Arc::new(Mutex::new(0i64));
        let clock = {
            let ticks = ticks.clone();
            // Each pass is one day later, so the loop crosses a renewal within a few passes.
            move || {
                let mut t = ticks.lock().expect("lock");
                *t += 1;
                t0() + time::Duration::days(*t)
            }
        };
        let sink = {
            let seen = seen.clone();
            move |pair: CertPair| seen.lock().expect("lock").push(pair)
        };
        block_on(async {
            let _ = tokio::time::timeout(Duration::from_secs(5), async {
                let run = run_with(&store, &options, sink, clock);
                tokio::pin!(run);
                loop {
                    tokio::select! {
                        _ = &mut run => break,
                        _ = tokio::time::sleep(Duration::from_millis(1)) => {
                            if *ticks.lock().expect("lock") >= 25 { break; }
                        }
                    }
                }
            })
            .await;
        });
        let seen = seen.lock().expect("lock");
        assert!(
            seen.len() >= 2,
            "initial and rotated certificates, got {}",
            seen.len()
        );
        assert_ne!(seen[0], seen[1]);
        assert!(seen.windows(2).all(|w| w[0] != w[1]), "no repeated reports");
    }

    #[derive(Debug, Parser)]
    struct Wrapper {
        #[command(flatten)]
        args: SelfManagedArgs,
    }

    #[test]
    fn flags_give_options_and_require_what_is_needed() {
        let parsed = Wrapper::try_parse_from([
            "x",
            "--self-managed-certs",
            "--self-managed-secret=tls",
            "--self-managed-namespace=ns",
            "--self-managed-webhook=hook",
            "--self-managed-dns-name=a.ns.svc",
            "--self-managed-dns-name=a",
            "--self-managed-ca-validity=3650d",
            "--self-managed-cert-validity=90d",
        ])
        .expect("parses");
        let options = parsed.args.options().expect("valid").expect("enabled");
        assert_eq!(options.secret, "tls");
        assert_eq!(options.namespace, "ns");
        assert_eq!(options.webhook, "hook");
        assert_eq!(options.policy.dns_names, ["a.ns.svc", "a"]);
        assert_eq!(
            options.policy.cert_validity,
            Duration::from_secs(90 * 86_400)
        );
        assert_eq!(options.resync, Duration::from_secs(60));

        let off = Wrapper::try_parse_from(["x"]).expect("parses");
        assert!(off.args.options().expect("valid").is_none());

        assert!(Wrapper::try_parse_from(["x", "--self-managed-certs"]).is_err());
        assert!(Wrapper::try_parse_from(["x", "--self-managed-ca-validity=forever"]).is_err());
        let inverted = Wrapper::try_parse_from([
            "x",
            "--self-managed-certs",
            "--self-managed-secret=tls",
            "--self-managed-namespace=ns",
            "--self-managed-webhook=hook",
            "--self-managed-dns-name=a",
            "--self-managed-ca-validity=10d",
            "--self-managed-cert-validity=90d",
        ])
        .expect("parses");
        assert!(inverted.args.options().is_err());
    }
}
