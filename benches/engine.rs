//! Engine cost per pod: the `hello` pod, a pod with 2,000 env vars (Istio's own
//! `BenchmarkInjection/many_env_vars` case) and a pod with 50 containers. Each iteration is the
//! whole webhook-side work: injection plus the JSON patch.

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use serde_json::{Value, json};
use sidecar_injector::config::Config;
use sidecar_injector::inject::{self, Outcome, Request};

// The allocator the `sidecar-injector` binary runs with, so the figures are the server's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn hello() -> Value {
    json!({
        "metadata": {"generateName": "hello-7d9c8b6f5-", "namespace": "default",
            "labels": {"app": "hello", "tier": "backend", "track": "stable", "pod-template-hash": "7d9c8b6f5"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "hello-7d9c8b6f5", "controller": true, "uid": "1"}]},
        "spec": {"containers": [{"name": "hello", "image": "fake.docker.io/google-samples/hello-go-gke:1.0",
            "ports": [{"name": "http", "containerPort": 80, "protocol": "TCP"}]}]}
    })
}

fn many_env_vars() -> Value {
    let mut pod = hello();
    let env: Vec<Value> = (0..2000)
        .map(|i| json!({"name": format!("ENV_VAR_{i}"), "value": format!("value-{i}")}))
        .collect();
    pod["spec"]["containers"][0]["env"] = Value::from(env);
    pod
}

fn many_containers() -> Value {
    let mut pod = hello();
    let containers: Vec<Value> = (0..50)
        .map(|i| {
            json!({"name": format!("c{i}"), "image": "app:1",
            "ports": [{"containerPort": 8000 + i, "name": format!("http-{i}")}],
            "readinessProbe": {"httpGet": {"port": 8000 + i, "path": "/ready"}},
            "env": [{"name": "A", "value": "1"}]})
        })
        .collect();
    pod["spec"]["containers"] = Value::from(containers);
    pod
}

fn bench(c: &mut Criterion) {
    let config = Config::embedded();
    let mut group = c.benchmark_group("inject");
    for (name, pod) in [
        ("hello", hello()),
        ("2000-env-vars", many_env_vars()),
        ("50-containers", many_containers()),
    ] {
        group.bench_with_input(BenchmarkId::from_parameter(name), &pod, |b, pod| {
            b.iter(|| {
                let req = Request {
                    pod,
                    namespace: Some("default"),
                    workload: None,
                    native_sidecars: true,
                };
                match inject::inject(&config, &req) {
                    Ok(Outcome::Injected(out)) => inject::patch(pod, &out.pod),
                    other => panic!("unexpected outcome {other:?}"),
                }
            })
        });
    }
    // Every pod distinct (its app label, hence its rendered fragment): no fragment is reused,
    // which is the cost of the first pod of each workload.
    let mut n = 0u64;
    group.bench_function("hello-distinct", |b| {
        b.iter_batched(
            || {
                n += 1;
                let mut pod = hello();
                pod["metadata"]["labels"]["app"] = Value::from(format!("hello-{n}"));
                pod
            },
            |pod| {
                let req = Request {
                    pod: &pod,
                    namespace: Some("default"),
                    workload: None,
                    native_sidecars: true,
                };
                match inject::inject(&config, &req) {
                    Ok(Outcome::Injected(out)) => inject::patch(&pod, &out.pod),
                    other => panic!("unexpected outcome {other:?}"),
                }
            },
            criterion::BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
