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
    let [_, path, mode, n, ..] = args.as_slice() else {
        eprintln!("usage: replica_path BODY.json replicas|distinct N");
        std::process::exit(2);
    };
    let Ok(template) = std::fs::read_to_string(path) else {
        eprintln!("cannot read {path}");
        std::process::exit(2);
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
}

/// As `server::webhook::decide`: the head, a replay, else the review through the memo.
fn answer(memo: &ReplicaMemo, config: &Arc<Config>, body: &[u8]) -> Decision {
    match memo.answer(config, body, false) {
        Some(Ok(decision)) => decision,
        other => panic!("no answer: {other:?}"),
    }
}
