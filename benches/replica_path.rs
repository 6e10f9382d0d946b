//! The server's path for one review through the replica memo, without HTTP or TLS, for
//! instruction counts under callgrind (repeatable on a loaded machine, unlike wall-clock
//! figures): `replica_path BODY.json replicas|distinct N` answers N reviews made from the body
//! as `scripts/bench-load.sh` makes them (each its own uid and token volume name; `distinct`:
//! each also another `app` label, so every one is the first of a new workload). Run it for two
//! values of N and divide the difference of the counts by the difference of N.

use std::sync::Arc;

use sidecar_injector::admission::Decision;
use sidecar_injector::config::Config;
use sidecar_injector::replicas::ReplicaMemo;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (template, mode, n, check) = match args.as_slice() {
        [_, path, mode, n] => match std::fs::read_to_string(path) {
            Ok(template) => (template, mode.as_str(), n.as_str(), false),
            Err(err) => {
                eprintln!("cannot read {path}: {err}");
                std::process::exit(2);
            }
        },
        // `cargo test --all-targets` runs benches without arguments: check a few replicas.
        _ => {
            println!("usage: replica_path BODY.json replicas|distinct N; checking 3 replicas");
            (SELF_CHECK.to_owned(), "replicas", "3", true)
        }
    };
    let n: usize = n.parse().unwrap_or(0);
    let bodies: Vec<Vec<u8>> = (0..n)
        .map(|i| {
            let mut rest = i;
            let suffix: String = (0..5)
                .map(|_| {
                    let c = char::from(ALPHABET[rest % 27]);
                    rest /= 27;
                    c
                })
                .collect();
            let mut body = template
                .replace(
                    "kube-api-access-x7k2p",
                    &format!("kube-api-access-{suffix}"),
                )
                .replacen("42010a800002", &format!("{i:012x}"), 1);
            if mode == "distinct" {
                body = body.replacen("\"app\":\"hello\"", &format!("\"app\":\"hello-{i}\""), 1);
            }
            body.into_bytes()
        })
        .collect();
    let config = Arc::new(Config::embedded());
    let memo = ReplicaMemo::default();
    let mut injected = 0;
    for body in &bodies {
        if let Decision::Patch { .. } = answer(&memo, &config, body) {
            injected += 1;
        }
    }
    println!("{injected} of {n} injected, {} replayed", memo.replayed());
    if check && (injected != n || memo.replayed() + 1 != n as u64) {
        eprintln!("every review should be injected, and all but the first replayed");
        std::process::exit(1);
    }
}

/// A small review of the form `scripts/bench-load.sh` sends.
const SELF_CHECK: &str = r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"705ab4f5-6393-11e8-b7cc-42010a800002","kind":{"group":"","version":"v1","kind":"Pod"},"operation":"CREATE","namespace":"default","object":{"metadata":{"generateName":"hello-7d9c8b6f5-","labels":{"app":"hello"}},"spec":{"containers":[{"name":"hello","image":"hello","volumeMounts":[{"name":"kube-api-access-x7k2p","mountPath":"/var/run/secrets/kubernetes.io/serviceaccount"}]}],"volumes":[{"name":"kube-api-access-x7k2p","projected":{"sources":[{"serviceAccountToken":{"path":"token"}}]}}]}}}}"#;

/// As `server::webhook::decide`: the head, a replay, else the review through the memo.
fn answer(memo: &ReplicaMemo, config: &Arc<Config>, body: &[u8]) -> Decision {
    match memo.answer(config, body, false) {
        Some(Ok(decision)) => decision,
        other => panic!("no answer: {other:?}"),
    }
}
