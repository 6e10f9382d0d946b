//! The whole engine on generated pods (see `pods.rs` for how they are built). Invariants:
//! nothing panics; an injected pod is reproduced by applying the patch to the original;
//! injecting the injected pod again changes nothing.

#![no_main]

mod pods;

use libfuzzer_sys::fuzz_target;
use pods::{Input, Name, config, pod, workload};
use sidecar_injector::inject::{self, Outcome, Request};

fuzz_target!(|input: Input| {
    let original = pod(&input);
    let namespace = input.request_namespace.as_ref().map(Name::get);
    let request = Request {
        pod: &original,
        namespace: namespace.as_deref(),
        workload: workload(&input.workload),
        native_sidecars: input.native,
    };
    let Ok(Outcome::Injected(first)) = inject::inject(config(), &request) else {
        return;
    };
    let patch = inject::patch(&original, &first.pod);
    let mut patched = original.clone();
    json_patch::patch(&mut patched, &patch).expect("the patch applies to the original");
    assert_eq!(
        patched, first.pod,
        "the patch does not reproduce the output"
    );

    let again = Request {
        pod: &first.pod,
        ..request
    };
    match inject::inject(config(), &again) {
        Ok(Outcome::Injected(second)) => {
            assert_eq!(second.pod, first.pod, "injecting twice changed the pod")
        }
        Ok(Outcome::Skipped(_)) => {}
        other => panic!("re-injecting the injected pod gave {other:?}"),
    }
});
