//! Engine cost per pod: the `hello` pod, a pod with 2,000 env vars (Istio's own
//! `BenchmarkInjection/many_env_vars` case) and a pod with 50 containers. Each iteration is the
//! whole webhook-side work: injection plus the JSON patch as the webhook writes it.
//!
//! Three ways the same `hello` pod arrives: the same pod again and again; replicas as the API
//! server really sends them (each with its own service-account token volume, which the template
//! does not read); and every pod a different workload (its `app` label, which the template
//! reads), which is the cost of the first pod of each workload. And the reinvocation review: the
//! injected `hello` as the API server stores it (the token mounted into the injected containers,
//! container defaults filled in), which gets no patch.

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

/// The service-account token volume the API server adds to every pod before webhooks run, with
/// its per-pod random suffix, and its mount in the app container.
fn with_token_volume(mut pod: Value, n: u64) -> Value {
    let name = format!("kube-api-access-{:05x}", n % 0xfffff);
    pod["spec"]["volumes"] = json!([{"name": name, "projected": {"defaultMode": 420, "sources": [
        {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
        {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}}]}}]);
    pod["spec"]["containers"][0]["volumeMounts"] = json!([{"name": name, "readOnly": true,
        "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}]);
    pod
}

/// `injected` as the reinvocation review sends it: the token volume's mount added to the
/// containers the injection added, and the container defaults the API server fills in.
fn as_stored(mut injected: Value) -> Value {
    let mount = injected["spec"]["containers"][0]["volumeMounts"][0].clone();
    for list in ["initContainers", "containers"] {
        for c in injected["spec"][list].as_array_mut().into_iter().flatten() {
            let Some(c) = c.as_object_mut() else { continue };
            c.entry("imagePullPolicy").or_insert(json!("IfNotPresent"));
            c.entry("terminationMessagePath")
                .or_insert(json!("/dev/termination-log"));
            c.entry("terminationMessagePolicy").or_insert(json!("File"));
            let mounts = c.entry("volumeMounts").or_insert(json!([]));
            if let Some(mounts) = mounts.as_array_mut()
                && !mounts.contains(&mount)
            {
                mounts.push(mount.clone());
            }
        }
    }
    injected
}

fn inject_and_patch(config: &Config, pod: &Value) -> Vec<u8> {
    let req = Request {
        pod,
        namespace: Some("default"),
        workload: None,
        native_sidecars: true,
    };
    match inject::inject(config, &req) {
        Ok(Outcome::Injected(out)) => inject::patch_json(pod, &out.pod),
        other => panic!("unexpected outcome {other:?}"),
    }
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
            b.iter(|| inject_and_patch(&config, pod))
        });
    }
    let mut n = 0u64;
    group.bench_function("hello-replicas", |b| {
        b.iter_batched(
            || {
                n += 1;
                with_token_volume(hello(), n)
            },
            |pod| inject_and_patch(&config, &pod),
            criterion::BatchSize::SmallInput,
        )
    });
    group.bench_function("hello-distinct", |b| {
        b.iter_batched(
            || {
                n += 1;
                let mut pod = with_token_volume(hello(), n);
                pod["metadata"]["labels"]["app"] = Value::from(format!("hello-{n}"));
                pod
            },
            |pod| inject_and_patch(&config, &pod),
            criterion::BatchSize::SmallInput,
        )
    });
    let injected = {
        let pod = with_token_volume(hello(), 1);
        let req = Request {
            pod: &pod,
            namespace: Some("default"),
            workload: None,
            native_sidecars: true,
        };
        match inject::inject(&config, &req) {
            Ok(Outcome::Injected(out)) => out.pod,
            other => panic!("unexpected outcome {other:?}"),
        }
    };
    let stored = as_stored(injected);
    assert_eq!(
        inject_and_patch(&config, &stored),
        b"[]",
        "the review gets no patch"
    );
    group.bench_with_input("hello-reinvocation", &stored, |b, pod| {
        b.iter(|| inject_and_patch(&config, pod))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
