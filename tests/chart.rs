//! Checks of the Helm chart in charts/sidecar-injector, rendered by the real `helm` over the value
//! sets in tests/chart/: the webhook configuration's selectors and fields, the Deployment's
//! security settings, RBAC matching the enabled features, the server flags (parsed with the real
//! CLI definition), the ConfigMap against the files the binary embeds, and deploy/ against the
//! chart.
//!
//! helm is found through `HELM`, then `.tools/bin/helm`, then `PATH`; `scripts/install-helm.sh`
//! installs it. Without helm these tests fail: a chart that was never rendered is not checked.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use clap::Parser as _;
use serde_json::{Value, json};
use sidecar_injector::cli::{Cli, Command as CliCommand};
use sidecar_injector::config::{Config, Sources};
use sidecar_injector::inject::{Outcome, Request, inject};

const RELEASE: &str = "sidecar-injector";
const NAMESPACE: &str = "sidecar-injector";
const DEPLOY_MANIFEST: &str = "deploy/sidecar-injector.yaml";

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn chart_dir() -> PathBuf {
    root().join("charts/sidecar-injector")
}

fn helm() -> PathBuf {
    if let Some(path) = std::env::var_os("HELM").filter(|p| !p.is_empty()) {
        return PathBuf::from(path);
    }
    let local = root().join(".tools/bin/helm");
    if local.is_file() {
        return local;
    }
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            let candidate = dir.join("helm");
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    panic!(
        "helm not found (checked $HELM, .tools/bin/helm and PATH): run scripts/install-helm.sh \
         or set HELM to a helm v3 binary"
    );
}

fn run_helm(args: &[&str]) -> Result<String, String> {
    let helm = helm();
    let output = Command::new(&helm)
        .args(args)
        .current_dir(root())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", helm.display()));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    if output.status.success() {
        Ok(stdout)
    } else {
        Err(format!("helm {args:?} failed: {stderr}{stdout}"))
    }
}

/// The value sets, by file stem.
fn value_sets() -> Vec<String> {
    let mut sets: Vec<String> = std::fs::read_dir(root().join("tests/chart"))
        .expect("tests/chart is readable")
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .filter_map(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .collect();
    sets.sort();
    assert!(
        sets.len() >= 7,
        "expected the value sets in tests/chart, found {sets:?}"
    );
    sets
}

fn values_file(set: &str) -> String {
    format!("tests/chart/{set}.yaml")
}

fn template_text(set: &str, extra: &[&str]) -> Result<String, String> {
    let file = values_file(set);
    let mut args = vec![
        "template",
        RELEASE,
        "charts/sidecar-injector",
        "--namespace",
        NAMESPACE,
        "-f",
        &file,
    ];
    args.extend_from_slice(extra);
    run_helm(&args)
}

/// The rendered objects of one value set.
struct Rendered {
    set: String,
    objects: Vec<Value>,
    /// Chart defaults with the value set merged over them.
    values: Value,
}

fn render(set: &str) -> Rendered {
    let text = template_text(set, &[]).unwrap_or_else(|e| panic!("{set}: {e}"));
    let objects = sidecar_injector::yaml::parse_documents(&text)
        .unwrap_or_else(|e| panic!("{set}: rendered YAML does not parse: {e}"));
    let mut values = read_yaml(&chart_dir().join("values.yaml"));
    deep_merge(&mut values, read_yaml(&root().join(values_file(set))));
    Rendered {
        set: set.to_string(),
        objects,
        values,
    }
}

fn render_all() -> Vec<Rendered> {
    value_sets().iter().map(|s| render(s)).collect()
}

fn read_yaml(path: &Path) -> Value {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    sidecar_injector::yaml::parse_one(&text)
        .unwrap_or_else(|e| panic!("{} does not parse: {e}", path.display()))
}

fn deep_merge(base: &mut Value, over: Value) {
    match (base, over) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(slot) => deep_merge(slot, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (slot, v) if !v.is_null() => *slot = v,
        _ => {}
    }
}

impl Rendered {
    fn all(&self, kind: &str) -> Vec<&Value> {
        self.objects.iter().filter(|o| o["kind"] == kind).collect()
    }

    fn one(&self, kind: &str) -> &Value {
        let found = self.all(kind);
        assert_eq!(
            found.len(),
            1,
            "{}: expected one {kind}, found {}",
            self.set,
            found.len()
        );
        found[0]
    }

    fn value(&self, pointer: &str) -> &Value {
        self.values
            .pointer(pointer)
            .unwrap_or_else(|| panic!("{}: chart value {pointer} missing", self.set))
    }

    fn str_value(&self, pointer: &str) -> String {
        match self.value(pointer) {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        }
    }

    fn cert_mode(&self) -> String {
        self.str_value("/certificates/mode")
    }

    fn native(&self) -> String {
        self.str_value("/nativeSidecars")
    }

    fn container(&self) -> &Value {
        let containers = self.one("Deployment")["spec"]["template"]["spec"]["containers"]
            .as_array()
            .expect("containers");
        assert_eq!(containers.len(), 1, "{}: one container", self.set);
        &containers[0]
    }

    fn args(&self) -> Vec<String> {
        self.container()["args"]
            .as_array()
            .expect("args")
            .iter()
            .map(|a| a.as_str().expect("string arg").to_string())
            .collect()
    }

    /// The value of `--flag=value` in the container args (the chart always uses the `=` form).
    fn flag(&self, flag: &str) -> Option<String> {
        let prefix = format!("{flag}=");
        self.args()
            .iter()
            .find_map(|a| a.strip_prefix(&prefix).map(str::to_string))
    }

    fn flags(&self, flag: &str) -> Vec<String> {
        let prefix = format!("{flag}=");
        self.args()
            .iter()
            .filter_map(|a| a.strip_prefix(&prefix).map(str::to_string))
            .collect()
    }
}

fn strs(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// Lint and validation

#[test]
fn helm_lint_passes_for_every_value_set() {
    for set in value_sets() {
        let file = values_file(&set);
        run_helm(&["lint", "--strict", "charts/sidecar-injector", "-f", &file])
            .unwrap_or_else(|e| panic!("{set}: {e}"));
    }
}

#[test]
fn invalid_values_are_rejected_at_render_time() {
    for (flag, wanted) in [
        ("certificates.mode=vault", "certificates.mode"),
        ("webhook.failurePolicy=Retry", "webhook.failurePolicy"),
        (
            "webhook.reinvocationPolicy=Always",
            "webhook.reinvocationPolicy",
        ),
        ("webhook.timeoutSeconds=0", "webhook.timeoutSeconds"),
        ("webhook.timeoutSeconds=31", "webhook.timeoutSeconds"),
        ("nativeSidecars=sometimes", "nativeSidecars"),
    ] {
        let err = template_text("default", &["--set", flag])
            .expect_err(&format!("--set {flag} should be rejected"));
        assert!(
            err.contains(wanted),
            "--set {flag}: error does not name {wanted}: {err}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The webhook configuration

/// Whether a Kubernetes LabelSelector (matchLabels + matchExpressions) matches `labels`.
fn selector_matches(selector: &Value, labels: &BTreeMap<String, String>) -> bool {
    if let Some(m) = selector["matchLabels"].as_object() {
        for (k, v) in m {
            if labels.get(k).map(String::as_str) != v.as_str() {
                return false;
            }
        }
    }
    if let Some(exprs) = selector["matchExpressions"].as_array() {
        for e in exprs {
            let key = e["key"].as_str().expect("expression key");
            let values = strs(&e["values"]);
            let value = labels.get(key);
            let ok = match e["operator"].as_str().expect("operator") {
                "In" => value.is_some_and(|v| values.contains(v)),
                "NotIn" => value.is_none_or(|v| !values.contains(v)),
                "Exists" => value.is_some(),
                "DoesNotExist" => value.is_none(),
                other => panic!("unknown selector operator {other}"),
            };
            if !ok {
                return false;
            }
        }
    }
    true
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The webhook entries the API server would call for a pod with `pod` labels created in the
/// namespace `ns` with `ns_labels` (the API server adds `kubernetes.io/metadata.name` itself).
fn matching_entries<'a>(
    mwc: &'a Value,
    ns: &str,
    ns_labels: &[(&str, &str)],
    pod: &[(&str, &str)],
) -> Vec<&'a str> {
    let mut ns_labels = labels(ns_labels);
    ns_labels.insert("kubernetes.io/metadata.name".into(), ns.into());
    let pod = labels(pod);
    mwc["webhooks"]
        .as_array()
        .expect("webhooks")
        .iter()
        .filter(|w| {
            selector_matches(&w["namespaceSelector"], &ns_labels)
                && selector_matches(&w["objectSelector"], &pod)
        })
        .map(|w| w["name"].as_str().expect("webhook name"))
        .collect()
}

/// (namespace, namespace labels, pod labels, injected?)
type Case<'a> = (
    &'a str,
    Vec<(&'a str, &'a str)>,
    Vec<(&'a str, &'a str)>,
    bool,
);

#[test]
fn webhook_selectors_follow_istio_precedence() {
    const ENABLED: (&str, &str) = ("istio-injection", "enabled");
    const DISABLED: (&str, &str) = ("istio-injection", "disabled");
    const OPT_OUT: (&str, &str) = ("sidecar.istio.io/inject", "false");
    const OPT_IN: (&str, &str) = ("sidecar.istio.io/inject", "true");
    for r in render_all() {
        let mwc = r.one("MutatingWebhookConfiguration");
        let revision = r.str_value("/revision");
        let default_rev = revision.is_empty();
        let rev = if default_rev {
            "default"
        } else {
            revision.as_str()
        };
        let other_rev = if default_rev { "canary" } else { "default" };
        let cases: Vec<Case> = vec![
            ("app", vec![ENABLED], vec![], default_rev),
            ("app", vec![ENABLED], vec![OPT_OUT], false),
            ("app", vec![ENABLED], vec![OPT_IN], default_rev),
            ("app", vec![DISABLED], vec![OPT_IN], false),
            ("app", vec![DISABLED], vec![("istio.io/rev", rev)], false),
            ("app", vec![], vec![], false),
            ("app", vec![], vec![OPT_IN], default_rev),
            ("app", vec![], vec![OPT_OUT], false),
            ("app", vec![("istio.io/rev", rev)], vec![], true),
            ("app", vec![("istio.io/rev", rev)], vec![OPT_OUT], false),
            ("app", vec![("istio.io/rev", other_rev)], vec![], false),
            (
                "app",
                vec![("istio.io/rev", other_rev)],
                vec![OPT_IN],
                false,
            ),
            // istio-injection wins over istio.io/rev.
            (
                "app",
                vec![ENABLED, ("istio.io/rev", rev)],
                vec![],
                default_rev,
            ),
            ("app", vec![], vec![("istio.io/rev", rev)], true),
            ("app", vec![], vec![("istio.io/rev", other_rev)], false),
            ("app", vec![], vec![OPT_IN, ("istio.io/rev", rev)], true),
            // Never the injector's own namespace nor kube-system, whatever their labels.
            (NAMESPACE, vec![ENABLED], vec![], false),
            (NAMESPACE, vec![("istio.io/rev", rev)], vec![], false),
            (NAMESPACE, vec![], vec![("istio.io/rev", rev)], false),
            (NAMESPACE, vec![], vec![OPT_IN], false),
            ("kube-system", vec![ENABLED], vec![], false),
            (
                "kube-system",
                vec![("istio.io/rev", rev)],
                vec![OPT_IN],
                false,
            ),
            (
                "kube-system",
                vec![],
                vec![OPT_IN, ("istio.io/rev", rev)],
                false,
            ),
        ];
        for (ns, ns_labels, pod, injected) in cases {
            let hits = matching_entries(mwc, ns, &ns_labels, &pod);
            // Two matching entries would make the API server call the injector twice.
            let expected = usize::from(injected);
            assert_eq!(
                hits.len(),
                expected,
                "{}: namespace {ns} {ns_labels:?}, pod {pod:?}: matched {hits:?}",
                r.set
            );
        }
        for excluded in strs(r.value("/webhook/excludedNamespaces")) {
            assert!(
                matching_entries(mwc, &excluded, &[ENABLED], &[OPT_IN]).is_empty(),
                "{}: excluded namespace {excluded} is injected",
                r.set
            );
        }
    }
}

#[test]
fn webhook_fields_match_values_and_service() {
    for r in render_all() {
        let mwc = r.one("MutatingWebhookConfiguration");
        let service = r.one("Service");
        let service_name = service["metadata"]["name"].as_str().expect("service name");
        let webhook_port = service["spec"]["ports"]
            .as_array()
            .expect("ports")
            .iter()
            .find(|p| p["targetPort"] == "https-webhook")
            .expect("a Service port targets the webhook port");
        assert_eq!(webhook_port["port"], 443, "{}", r.set);
        let webhooks = mwc["webhooks"].as_array().expect("webhooks");
        assert!(!webhooks.is_empty());
        let mut names = BTreeSet::new();
        for w in webhooks {
            let name = w["name"].as_str().expect("name");
            assert!(names.insert(name), "{}: duplicate webhook {name}", r.set);
            assert_eq!(
                w["rules"],
                json!([{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"],
                        "resources": ["pods"], "scope": "Namespaced"}]),
                "{}: {name}",
                r.set
            );
            assert_eq!(w["sideEffects"], "None", "{}: {name}", r.set);
            assert_eq!(w["admissionReviewVersions"], json!(["v1", "v1beta1"]));
            assert_eq!(w["failurePolicy"], *r.value("/webhook/failurePolicy"));
            assert_eq!(w["timeoutSeconds"], *r.value("/webhook/timeoutSeconds"));
            assert_eq!(
                w["reinvocationPolicy"],
                *r.value("/webhook/reinvocationPolicy")
            );
            let svc = &w["clientConfig"]["service"];
            assert_eq!(svc["name"], service_name, "{}: {name}", r.set);
            assert_eq!(svc["namespace"], NAMESPACE, "{}: {name}", r.set);
            assert_eq!(svc["path"], "/inject", "{}: {name}", r.set);
            assert_eq!(svc["port"], webhook_port["port"], "{}: {name}", r.set);
        }
    }
}

#[test]
fn failure_policy_defaults_to_fail_and_reinvocation_to_if_needed() {
    let r = render("default");
    for w in r.one("MutatingWebhookConfiguration")["webhooks"]
        .as_array()
        .expect("webhooks")
    {
        assert_eq!(w["failurePolicy"], "Fail");
        assert_eq!(w["reinvocationPolicy"], "IfNeeded");
    }
    let r = render("fail-ignore");
    for w in r.one("MutatingWebhookConfiguration")["webhooks"]
        .as_array()
        .expect("webhooks")
    {
        assert_eq!(w["failurePolicy"], "Ignore");
        assert_eq!(w["timeoutSeconds"], 5);
    }
}

// ---------------------------------------------------------------------------------------------
// Certificates

fn b64(data: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(data)
        .expect("valid base64")
}

fn service_dns_names(r: &Rendered) -> BTreeSet<String> {
    let svc = r.one("Service")["metadata"]["name"]
        .as_str()
        .expect("service name")
        .to_string();
    [
        svc.clone(),
        format!("{svc}.{NAMESPACE}"),
        format!("{svc}.{NAMESPACE}.svc"),
        format!("{svc}.{NAMESPACE}.svc.cluster.local"),
    ]
    .into_iter()
    .collect()
}

fn pem_der(pem_bytes: &[u8]) -> Vec<u8> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem_bytes).expect("PEM certificate");
    pem.contents
}

#[test]
fn certificate_modes_wire_the_ca_bundle_and_the_mounted_secret() {
    for r in render_all() {
        let mode = r.cert_mode();
        let mwc = r.one("MutatingWebhookConfiguration");
        let webhooks = mwc["webhooks"].as_array().expect("webhooks");
        let secret_name = format!(
            "{}-tls",
            r.one("Service")["metadata"]["name"].as_str().unwrap()
        );
        let pod = &r.one("Deployment")["spec"]["template"]["spec"];
        let tls_volume = pod["volumes"]
            .as_array()
            .expect("volumes")
            .iter()
            .find(|v| v["secret"]["secretName"] == secret_name.as_str());
        match mode.as_str() {
            "helm" => {
                let secret = r
                    .all("Secret")
                    .into_iter()
                    .find(|s| s["metadata"]["name"] == secret_name.as_str())
                    .expect("the generated certificate Secret");
                let ca = secret["data"]["ca.crt"].as_str().expect("ca.crt");
                for w in webhooks {
                    assert_eq!(w["clientConfig"]["caBundle"], ca, "{}", r.set);
                }
                let ca_der = pem_der(&b64(ca));
                let (_, ca_cert) = x509_parser::parse_x509_certificate(&ca_der).expect("CA");
                let tls = b64(secret["data"]["tls.crt"].as_str().expect("tls.crt"));
                let tls_der = pem_der(&tls);
                let (_, cert) = x509_parser::parse_x509_certificate(&tls_der).expect("cert");
                assert_eq!(cert.issuer(), ca_cert.subject(), "{}", r.set);
                cert.verify_signature(Some(ca_cert.public_key()))
                    .expect("serving certificate signed by the CA");
                let sans: BTreeSet<String> = cert
                    .subject_alternative_name()
                    .expect("SAN extension parses")
                    .expect("SAN extension present")
                    .value
                    .general_names
                    .iter()
                    .filter_map(|n| match n {
                        x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_string()),
                        _ => None,
                    })
                    .collect();
                assert_eq!(sans, service_dns_names(&r), "{}", r.set);
                assert!(tls_volume.is_some(), "{}: Secret mounted", r.set);
            }
            "certManager" => {
                let cert = r
                    .all("Certificate")
                    .into_iter()
                    .find(|c| c["spec"]["secretName"] == secret_name.as_str())
                    .expect("a Certificate for the serving Secret");
                let annotation = &mwc["metadata"]["annotations"]["cert-manager.io/inject-ca-from"];
                assert_eq!(
                    *annotation,
                    format!("{NAMESPACE}/{}", cert["metadata"]["name"].as_str().unwrap()),
                    "{}",
                    r.set
                );
                let names: BTreeSet<String> = strs(&cert["spec"]["dnsNames"]).into_iter().collect();
                assert_eq!(names, service_dns_names(&r), "{}", r.set);
                let issuer = &cert["spec"]["issuerRef"];
                let given = r.value("/certificates/certManager/issuerRef");
                if given.as_object().is_some_and(|m| !m.is_empty()) {
                    assert_eq!(issuer, given, "{}", r.set);
                    assert!(r.all("Issuer").is_empty(), "{}: no chart Issuer", r.set);
                } else {
                    let ca_issuer = r
                        .all("Issuer")
                        .into_iter()
                        .find(|i| i["metadata"]["name"] == issuer["name"])
                        .expect("the chart's CA Issuer");
                    assert!(
                        ca_issuer["spec"]["ca"]["secretName"].is_string(),
                        "{}",
                        r.set
                    );
                }
                for w in webhooks {
                    assert!(w["clientConfig"]["caBundle"].is_null(), "{}", r.set);
                }
                assert!(tls_volume.is_some(), "{}: Secret mounted", r.set);
            }
            "selfManaged" => {
                // The server writes the caBundle; the chart must leave the field out so that an
                // upgrade or `kubectl apply` does not blank it.
                for w in webhooks {
                    assert!(w["clientConfig"]["caBundle"].is_null(), "{}", r.set);
                }
                assert!(r.all("Secret").is_empty(), "{}", r.set);
                assert!(r.all("Certificate").is_empty(), "{}", r.set);
                assert_eq!(r.flag("--self-managed-secret"), Some(secret_name.clone()));
                assert_eq!(
                    r.flag("--self-managed-webhook").as_deref(),
                    mwc["metadata"]["name"].as_str()
                );
                let names: BTreeSet<String> =
                    r.flags("--self-managed-dns-name").into_iter().collect();
                assert_eq!(names, service_dns_names(&r), "{}", r.set);
                assert!(tls_volume.is_none(), "{}", r.set);
            }
            other => panic!("{}: unknown mode {other}", r.set),
        }
        if mode != "selfManaged" {
            let volume = tls_volume.expect("tls volume")["name"].clone();
            let mount = r.container()["volumeMounts"]
                .as_array()
                .expect("mounts")
                .iter()
                .find(|m| m["name"] == volume)
                .expect("tls volume mounted");
            let dir = mount["mountPath"].as_str().expect("mountPath");
            assert_eq!(
                r.flag("--tls-cert-file"),
                Some(format!("{dir}/tls.crt")),
                "{}",
                r.set
            );
            assert_eq!(
                r.flag("--tls-key-file"),
                Some(format!("{dir}/tls.key")),
                "{}",
                r.set
            );
            assert!(
                mount["subPath"].is_null(),
                "{}: no subPath, so renewals reach the pod",
                r.set
            );
            assert!(r.flag("--self-managed-secret").is_none(), "{}", r.set);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The Deployment

#[test]
fn deployment_is_hardened_and_highly_available() {
    for r in render_all() {
        let deploy = r.one("Deployment");
        let pod = &deploy["spec"]["template"];
        let spec = &pod["spec"];
        let c = r.container();
        let set = &r.set;
        assert_eq!(deploy["spec"]["replicas"], 2, "{set}");
        assert_eq!(spec["securityContext"]["runAsNonRoot"], true, "{set}");
        assert!(
            spec["securityContext"]["runAsUser"]
                .as_u64()
                .is_some_and(|u| u > 0),
            "{set}"
        );
        assert_eq!(
            spec["securityContext"]["seccompProfile"]["type"], "RuntimeDefault",
            "{set}"
        );
        let sc = &c["securityContext"];
        assert_eq!(sc["readOnlyRootFilesystem"], true, "{set}");
        assert_eq!(sc["allowPrivilegeEscalation"], false, "{set}");
        assert_eq!(sc["runAsNonRoot"], true, "{set}");
        assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]), "{set}");
        assert!(sc["capabilities"]["add"].is_null(), "{set}");
        assert!(
            sc["privileged"].is_null() || sc["privileged"] == false,
            "{set}"
        );
        assert!(c["resources"]["requests"]["cpu"].is_string(), "{set}");
        assert!(c["resources"]["requests"]["memory"].is_string(), "{set}");
        assert!(c["resources"]["limits"]["memory"].is_string(), "{set}");
        // The injector must never be injected itself.
        assert_eq!(
            pod["metadata"]["labels"]["sidecar.istio.io/inject"], "false",
            "{set}"
        );

        // Spread over nodes, and a PDB selecting exactly these pods.
        let pod_labels = pod["metadata"]["labels"].as_object().expect("pod labels");
        let spread = spec["topologySpreadConstraints"]
            .as_array()
            .expect("spread");
        assert!(
            spread
                .iter()
                .any(|s| s["topologyKey"] == "kubernetes.io/hostname"),
            "{set}: spread across nodes"
        );
        let pdb = r.one("PodDisruptionBudget");
        let pdb_selector = pdb["spec"]["selector"]["matchLabels"]
            .as_object()
            .expect("pdb");
        for (k, v) in pdb_selector {
            assert_eq!(pod_labels.get(k), Some(v), "{set}: PDB selects the pods");
        }
        assert_eq!(
            deploy["spec"]["selector"]["matchLabels"],
            pdb["spec"]["selector"]["matchLabels"]
        );
        assert_eq!(
            deploy["spec"]["selector"]["matchLabels"],
            r.one("Service")["spec"]["selector"],
            "{set}: Service selects the pods"
        );

        // Probes on the admin port, which is the port `--admin-addr` listens on.
        let ports = c["ports"].as_array().expect("ports");
        let port_of = |name: &str| -> u64 {
            ports
                .iter()
                .find(|p| p["name"] == name)
                .and_then(|p| p["containerPort"].as_u64())
                .unwrap_or_else(|| panic!("{set}: container port {name}"))
        };
        let addr_port = |flag: &str| -> u64 {
            r.flag(flag)
                .and_then(|a| a.rsplit(':').next().and_then(|p| p.parse().ok()))
                .unwrap_or_else(|| panic!("{set}: {flag} with a port"))
        };
        assert_eq!(port_of("http-admin"), addr_port("--admin-addr"), "{set}");
        assert_eq!(port_of("https-webhook"), addr_port("--addr"), "{set}");
        for probe in ["livenessProbe", "readinessProbe"] {
            let port = &c[probe]["httpGet"]["port"];
            assert!(
                *port == "http-admin" || port.as_u64() == Some(port_of("http-admin")),
                "{set}: {probe} on the admin port, got {port}"
            );
            assert!(
                c[probe]["httpGet"]["path"].is_string(),
                "{set}: {probe} path"
            );
        }

        // The ConfigMap is mounted as a directory the server watches; no rollout on change.
        let cm_name = r.one("ConfigMap")["metadata"]["name"].clone();
        let volume = spec["volumes"]
            .as_array()
            .expect("volumes")
            .iter()
            .find(|v| v["configMap"]["name"] == cm_name)
            .expect("ConfigMap volume");
        let mount = c["volumeMounts"]
            .as_array()
            .expect("mounts")
            .iter()
            .find(|m| m["name"] == volume["name"])
            .expect("ConfigMap mounted");
        assert!(
            mount["subPath"].is_null(),
            "{set}: subPath mounts never see updates"
        );
        assert_eq!(
            r.flag("--config-dir").as_deref(),
            mount["mountPath"].as_str(),
            "{set}"
        );
        let annotations = pod["metadata"]["annotations"].as_object();
        assert!(
            annotations.is_none_or(|a| !a.keys().any(|k| k.starts_with("checksum/"))),
            "{set}: config changes reload live, without a rollout"
        );
    }
}

#[test]
fn server_flags_are_accepted_by_serve() {
    let mut rejected = Vec::new();
    for r in render_all() {
        assert!(
            r.container()["command"].is_null(),
            "{}: the image entrypoint runs",
            r.set
        );
        assert_eq!(r.flag("--native-sidecars"), Some(r.native()), "{}", r.set);
        let args = r.args();
        let argv = std::iter::once("sidecar-injector".to_string()).chain(args.iter().cloned());
        match Cli::try_parse_from(argv) {
            Ok(cli) => assert!(
                matches!(cli.command, CliCommand::Serve(_)),
                "{}: args {args:?} do not run serve",
                r.set
            ),
            Err(e) => rejected.push(format!("{}: {args:?}\n{e}", r.set)),
        }
    }
    assert!(
        rejected.is_empty(),
        "`serve` rejects the chart's args:\n{}",
        rejected.join("\n")
    );
}

/// `128Mi`, `1Gi`, `300M` and plain bytes, as the chart's resources are written.
fn quantity_bytes(q: &str) -> u64 {
    let units = [
        ("Ki", 1 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
    ];
    for (suffix, scale) in units {
        if let Some(n) = q.strip_suffix(suffix) {
            return n.parse::<u64>().unwrap_or_else(|e| panic!("{q}: {e}")) * scale;
        }
    }
    q.parse().unwrap_or_else(|e| panic!("{q}: {e}"))
}

#[test]
fn the_memory_limit_covers_the_servers_bound() {
    for r in render_all() {
        let argv = std::iter::once("sidecar-injector".to_string()).chain(r.args());
        let Ok(Cli {
            command: CliCommand::Serve(serve),
            ..
        }) = Cli::try_parse_from(argv)
        else {
            panic!("{}: the args do not run serve", r.set);
        };
        // The engine's working memory grows with the reviews it runs at once: the chart sets
        // how many, so the bound does not depend on the node's cores.
        assert!(
            r.args().iter().any(|a| a.starts_with("--engine-workers=")),
            "{}: the chart leaves the engine workers to the node's core count",
            r.set
        );
        let settings = serve.settings();
        let bound =
            sidecar_injector::server::memory::worst_case(&settings, settings.engine.workers);
        let limit = r.container()["resources"]["limits"]["memory"]
            .as_str()
            .map(quantity_bytes)
            .expect("a memory limit");
        assert!(
            limit >= bound,
            "{}: the memory limit {limit} is below the server's bound {bound}",
            r.set
        );
    }
}

// ---------------------------------------------------------------------------------------------
// RBAC

/// (apiGroup, resource, verb, resourceNames) granted to the injector's ServiceAccount.
type Grant = (String, String, String, Vec<String>);

fn grants(r: &Rendered) -> BTreeSet<Grant> {
    let sa = r.one("ServiceAccount")["metadata"]["name"].clone();
    let mut out = BTreeSet::new();
    let mut bound_roles = BTreeSet::new();
    for binding in r
        .all("RoleBinding")
        .into_iter()
        .chain(r.all("ClusterRoleBinding"))
    {
        let to_sa = binding["subjects"]
            .as_array()
            .expect("subjects")
            .iter()
            .any(|s| {
                s["kind"] == "ServiceAccount" && s["name"] == sa && s["namespace"] == NAMESPACE
            });
        assert!(to_sa, "{}: binding to someone else", r.set);
        let role_kind = binding["roleRef"]["kind"].as_str().expect("roleRef kind");
        let role_name = &binding["roleRef"]["name"];
        assert!(
            binding["kind"] == "RoleBinding" || role_kind == "ClusterRole",
            "{}: ClusterRoleBinding to a Role",
            r.set
        );
        let role = r
            .all(role_kind)
            .into_iter()
            .find(|x| x["metadata"]["name"] == *role_name)
            .unwrap_or_else(|| panic!("{}: bound {role_kind} {role_name} not rendered", r.set));
        bound_roles.insert((role_kind.to_string(), role_name.to_string()));
        for rule in role["rules"].as_array().expect("rules") {
            let names = strs(&rule["resourceNames"]);
            for group in strs(&rule["apiGroups"]) {
                for resource in strs(&rule["resources"]) {
                    for verb in strs(&rule["verbs"]) {
                        out.insert((group.clone(), resource.clone(), verb, names.clone()));
                    }
                }
            }
        }
    }
    for kind in ["Role", "ClusterRole"] {
        for role in r.all(kind) {
            let key = (kind.to_string(), role["metadata"]["name"].to_string());
            assert!(bound_roles.contains(&key), "{}: unbound {kind}", r.set);
        }
    }
    out
}

#[test]
fn rbac_grants_only_what_the_enabled_features_need() {
    for r in render_all() {
        let mwc_name = r.one("MutatingWebhookConfiguration")["metadata"]["name"]
            .as_str()
            .expect("name")
            .to_string();
        let secret = r.flag("--self-managed-secret");
        let mut expected: BTreeSet<Grant> = BTreeSet::new();
        let g = |group: &str, res: &str, verb: &str, names: &[&str]| -> Grant {
            (
                group.into(),
                res.into(),
                verb.into(),
                names.iter().map(|s| s.to_string()).collect(),
            )
        };
        if r.native() == "auto" {
            expected.insert(g("", "nodes", "list", &[]));
            expected.insert(g("", "nodes", "watch", &[]));
        }
        if r.cert_mode() == "selfManaged" {
            let secret = secret.clone().expect("--self-managed-secret");
            expected.insert(g("", "secrets", "create", &[]));
            expected.insert(g("", "secrets", "get", &[&secret]));
            expected.insert(g("", "secrets", "update", &[&secret]));
            let mwc = "mutatingwebhookconfigurations";
            expected.insert(g("admissionregistration.k8s.io", mwc, "get", &[&mwc_name]));
            expected.insert(g(
                "admissionregistration.k8s.io",
                mwc,
                "patch",
                &[&mwc_name],
            ));
        }
        let actual = grants(&r);
        assert_eq!(actual, expected, "{}", r.set);
        // Secrets are only ever granted inside the release namespace.
        for role in r.all("ClusterRole") {
            for rule in role["rules"].as_array().expect("rules") {
                assert!(
                    !strs(&rule["resources"]).contains(&"secrets".to_string()),
                    "{}",
                    r.set
                );
            }
        }
        let automount =
            &r.one("Deployment")["spec"]["template"]["spec"]["automountServiceAccountToken"];
        assert_eq!(
            *automount,
            Value::Bool(!expected.is_empty()),
            "{}: token only when used",
            r.set
        );
        assert_eq!(
            r.one("ServiceAccount")["automountServiceAccountToken"],
            false,
            "{}",
            r.set
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The ConfigMap and the files the binary embeds

fn configmap_sources(r: &Rendered) -> Sources {
    let data = &r.one("ConfigMap")["data"];
    let key = |k: &str| {
        data[k]
            .as_str()
            .unwrap_or_else(|| panic!("{}: key {k}", r.set))
            .to_string()
    };
    Sources {
        config: key("config"),
        values: key("values"),
        mesh: key("mesh"),
    }
}

fn files_dir() -> PathBuf {
    chart_dir().join("files")
}

fn shipped_templates() -> BTreeMap<String, String> {
    let dir = files_dir().join("templates");
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(&dir).expect("files/templates is readable") {
        let path = entry.expect("dir entry").path();
        let name = path
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        if let Some(stem) = name.strip_suffix(".yaml.j2") {
            let text = std::fs::read_to_string(&path).expect("template readable");
            out.insert(stem.to_string(), text);
        }
    }
    assert!(
        out.contains_key("sidecar"),
        "files/templates/sidecar.yaml.j2 is shipped"
    );
    out
}

#[test]
fn configmap_defaults_are_the_files_the_binary_embeds() {
    let r = render("default");
    assert_eq!(r.one("ConfigMap")["metadata"]["name"], "sidecar-injector");
    let sources = configmap_sources(&r);
    let mut config = sidecar_injector::yaml::parse_one(&sources.config).expect("config parses");
    let templates = config
        .as_object_mut()
        .and_then(|m| m.shift_remove("templates"))
        .expect("config has templates");
    // Byte for byte: a template is code, and whitespace control matters in Jinja.
    let templates: BTreeMap<String, String> =
        serde_json::from_value(templates).expect("templates are name -> text");
    assert_eq!(templates, shipped_templates());
    assert_eq!(config, read_yaml(&files_dir().join("config.yaml")));
    let values = sidecar_injector::yaml::parse_one(&sources.values).expect("values parse");
    assert_eq!(values, read_yaml(&files_dir().join("values.yaml")));
    let mesh = sidecar_injector::yaml::parse_one(&sources.mesh).expect("mesh parses");
    assert_eq!(mesh, read_yaml(&files_dir().join("mesh.yaml")));
}

fn sample_pod() -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "hello-7d8f9c-abcde",
            "namespace": "app",
            "labels": {"app": "hello", "version": "v1"},
            "annotations": {"example.com/keep": "yes"}
        },
        "spec": {
            "containers": [{
                "name": "hello",
                "image": "example.com/hello:1.0",
                "ports": [{"name": "http", "containerPort": 8080}],
                "readinessProbe": {"httpGet": {"path": "/ready", "port": "http"}}
            }]
        }
    })
}

#[test]
fn chart_configmap_injects_exactly_like_the_embedded_defaults() {
    let r = render("default");
    let from_chart = Config::from_sources(&configmap_sources(&r))
        .unwrap_or_else(|e| panic!("the chart's ConfigMap is rejected: {e}"));
    let embedded = Config::embedded();
    let pod = sample_pod();
    for native in [false, true] {
        let req = Request {
            pod: &pod,
            namespace: Some("app"),
            workload: None,
            native_sidecars: native,
        };
        let a = inject(&embedded, &req).expect("embedded config injects");
        let b = inject(&from_chart, &req).expect("chart config injects");
        assert!(
            matches!(a, Outcome::Injected(_)),
            "native={native}: not injected: {a:?}"
        );
        assert_eq!(a, b, "native={native}: the chart and the binary disagree");
    }
}

#[test]
fn overrides_merge_over_the_shipped_files() {
    let r = render("overrides");
    let sources = configmap_sources(&r);
    Config::from_sources(&sources).unwrap_or_else(|e| panic!("overridden ConfigMap rejected: {e}"));
    let config = sidecar_injector::yaml::parse_one(&sources.config).expect("config");
    let values = sidecar_injector::yaml::parse_one(&sources.values).expect("values");
    let mesh = sidecar_injector::yaml::parse_one(&sources.mesh).expect("mesh");
    let over = &r.values["injection"];
    let shipped_config = read_yaml(&files_dir().join("config.yaml"));
    let shipped_values = read_yaml(&files_dir().join("values.yaml"));
    let shipped_mesh = read_yaml(&files_dir().join("mesh.yaml"));

    // Overridden keys take the override ...
    assert_eq!(config["policy"], over["config"]["policy"]);
    assert_eq!(
        config["injectedAnnotations"],
        over["config"]["injectedAnnotations"]
    );
    assert_eq!(values["global"]["hub"], over["values"]["global"]["hub"]);
    assert_eq!(values["global"]["tag"], over["values"]["global"]["tag"]);
    assert_eq!(
        mesh["defaultConfig"]["holdApplicationUntilProxyStarts"],
        over["mesh"]["defaultConfig"]["holdApplicationUntilProxyStarts"]
    );
    // ... and everything else keeps the shipped default, down to nested siblings.
    assert_eq!(
        config["defaultTemplates"],
        shipped_config["defaultTemplates"]
    );
    assert_eq!(values["global"]["proxy"], shipped_values["global"]["proxy"]);
    assert_eq!(
        values["sidecarInjectorWebhook"],
        shipped_values["sidecarInjectorWebhook"]
    );
    assert_eq!(
        mesh["defaultConfig"]["statusPort"],
        shipped_mesh["defaultConfig"]["statusPort"]
    );
    assert_eq!(mesh["trustDomain"], shipped_mesh["trustDomain"]);
    // Extra templates are added beside the shipped ones.
    let templates = config["templates"].as_object().expect("templates");
    assert_eq!(templates["extra"], over["templates"]["extra"]);
    for (name, text) in shipped_templates() {
        assert_eq!(
            templates[&name],
            text.as_str(),
            "shipped template {name} kept"
        );
    }
}

#[test]
fn revision_names_objects_and_values_after_the_revision() {
    let r = render("revision");
    let revision = r.str_value("/revision");
    assert!(!revision.is_empty());
    for kind in [
        "ConfigMap",
        "Deployment",
        "Service",
        "MutatingWebhookConfiguration",
    ] {
        let name = r.one(kind)["metadata"]["name"]
            .as_str()
            .expect("name")
            .to_string();
        assert!(name.ends_with(&format!("-{revision}")), "{kind} {name}");
    }
    let values = sidecar_injector::yaml::parse_one(&configmap_sources(&r).values).expect("values");
    assert_eq!(values["revision"], revision.as_str());
}

// ---------------------------------------------------------------------------------------------
// deploy/

const DEPLOY_HEADER: &str = "\
# sidecar-injector for `kubectl apply -f`: charts/sidecar-injector rendered with its default
# values (release sidecar-injector, namespace sidecar-injector). Generated; do not edit. Change the
# chart, then run: UPDATE_DEPLOY=1 cargo test --test chart deploy_manifest
---
apiVersion: v1
kind: Namespace
metadata:
  name: sidecar-injector
";

fn rendered_deploy_manifest() -> String {
    let chart = run_helm(&[
        "template",
        RELEASE,
        "charts/sidecar-injector",
        "--namespace",
        NAMESPACE,
    ])
    .unwrap_or_else(|e| panic!("{e}"));
    format!("{DEPLOY_HEADER}{chart}")
}

#[test]
fn deploy_manifest_matches_the_chart() {
    let wanted = rendered_deploy_manifest();
    let path = root().join(DEPLOY_MANIFEST);
    if std::env::var_os("UPDATE_DEPLOY").is_some() {
        std::fs::write(&path, &wanted).expect("write deploy manifest");
    }
    let actual = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {DEPLOY_MANIFEST}: {e}"));
    assert!(
        actual == wanted,
        "{DEPLOY_MANIFEST} differs from the chart rendered with defaults; regenerate it with \
         UPDATE_DEPLOY=1 cargo test --test chart deploy_manifest"
    );
    let docs = sidecar_injector::yaml::parse_documents(&actual).expect("deploy manifest parses");
    assert!(
        docs.iter()
            .any(|d| d["kind"] == "Namespace" && d["metadata"]["name"] == NAMESPACE)
    );
    assert!(
        docs.iter()
            .any(|d| d["kind"] == "MutatingWebhookConfiguration")
    );
}

#[test]
fn analyze_passes_the_injectors_own_chart() {
    // The injector's own pods opt out of injection: `analyze` says so and nothing else, and
    // does not fail CI, for every value set.
    for set in value_sets() {
        let text = template_text(&set, &[]).unwrap_or_else(|e| panic!("{set}: {e}"));
        let mut child = Command::new(env!("CARGO_BIN_EXE_sidecar-injector"))
            .args(["analyze", "-f", "-", "-o", "json"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(&mut child.stdin.take().unwrap(), text.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{set}: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let findings: Vec<serde_json::Value> = serde_json::from_str(&stdout).unwrap();
        assert!(
            findings.iter().all(|f| f["id"] == "not-injected"),
            "{set}: {stdout}"
        );
    }
}
