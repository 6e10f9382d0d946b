//! Inputs the fuzz targets (fuzz/) found to break an invariant, kept as ordinary tests so the
//! fixes stay fixed without a fuzzer.

use serde_json::{Value, json};
use sidecar_injector::config::Config;
use sidecar_injector::inject::{self, Outcome, Request, SkipReason, quantity};
use sidecar_injector::yaml;

/// `fuzz/fuzz_targets/annotations.rs`: the canonical form of a quantity is its own canonical
/// form. Rounding below a nano-unit carried into trailing zeros that were not stripped, so
/// `.999999993555555e-1` became `100000000e-9`, whose canonical form is `100e-3`.
#[test]
fn quantity_rounded_up_to_nano_units_is_canonical() {
    for input in [".999999993555555e-1", "0.0999999999", "9.9999999999m"] {
        let once = quantity::canonical(input).unwrap();
        assert_eq!(
            quantity::canonical(&once).as_deref(),
            Ok(once.as_str()),
            "{input}"
        );
    }
    assert_eq!(
        quantity::canonical(".999999993555555e-1").as_deref(),
        Ok("100e-3")
    );
    assert_eq!(quantity::canonical("0.0999999999").as_deref(), Ok("100m"));
}

/// Found while fixing the above: above 10^18 the digits stay in the mantissa, and scaling it
/// overflowed u128 (a panic with overflow checks, a wrong value without).
#[test]
fn quantity_too_large_for_the_mantissa_is_an_error() {
    let huge = format!("1{}e30", "0".repeat(38));
    assert!(quantity::validate(&huge).is_ok());
    let err = quantity::canonical(&huge).unwrap_err();
    assert!(err.0.contains("too large"), "{}", err.0);
    // Just inside: 10^38 with the exponent 18 needs no scaling.
    assert_eq!(quantity::canonical("1e18").as_deref(), Ok("1e18"));
}

/// `fuzz/fuzz_targets/yaml_rendered.rs`: the fast reader of rendered YAML accepted what the
/// full parser rejects (`- :\0`, a tab after a dash, `key: -`, a key over 1,024 characters),
/// typed or decoded a value otherwise (`[-0]`, an escaped surrogate pair) or read as line breaks
/// what the full parser does not (a lone CR, NEL, U+2028). Such documents now go to the full
/// parser; both readers give the same answer. (The surrogate pair was found by reading, not by
/// the fuzzer.)
#[test]
fn rendered_yaml_with_special_characters_reads_as_the_full_parser_reads_it() {
    for text in [
        "- :\0",
        // A comment where an item's value would be: the item is null, not the text `#/`.
        "- #/",
        "a: x\ry",
        "a: x\u{85}y",
        "a: \"x\u{2028}y\"",
        "a: b\u{7f}",
        "a: \u{feff}b",
        "a: 1\r\nb: 2\r\n",
        // A tab after a sequence dash: an error for the full parser, once an item `-`.
        "- -\t\t\t\t",
        "- a\t",
        // A dash as a mapping value on the key's line: an error for the full parser.
        "J: -",
        "a: - b",
        "a: -1",
        // Negative zero in JSON flow: an integer for the full parser, -0.0 for serde_json.
        "- [-0]",
        "a: {\"b\": -0}",
        "a: [1.5, -0.0, 1e3]",
        // An escaped surrogate pair: one character for JSON, not for the full parser.
        "a: \"\\ud83d\\ude00\"",
        "a: [\"\\ud83d\\ude00\"]",
    ] {
        let fast = yaml::parse_rendered(text).map_err(|e| e.message);
        let full = yaml::parse_one(text).map_err(|e| e.message);
        assert_eq!(fast, full, "{text:?}");
    }
    // A key over YAML's 1,024 characters for keys without `? `: an error for the full parser.
    for text in [
        format!("- {}:", "1:".repeat(700)),
        format!("{}: x", "k".repeat(1100)),
    ] {
        let fast = yaml::parse_rendered(&text).map_err(|e| e.message);
        let full = yaml::parse_one(&text).map_err(|e| e.message);
        assert_eq!(fast, full, "{text:?}");
    }
}

/// `fuzz/fuzz_targets/engine.rs`: injecting an injected pod must change nothing. A
/// canonical-name source that trims down to nothing (`-`) gave the label an empty value; the
/// next injection skipped the empty label and used the workload name instead.
#[test]
fn canonical_name_that_trims_to_nothing_is_stable_across_injections() {
    let config = Config::embedded();
    for key in [
        "service.istio.io/canonical-name",
        "app.kubernetes.io/name",
        "app",
    ] {
        let pod = json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"generateName": "istio-validation", "labels": {key: "-._"}},
            "spec": {"containers": []}
        });
        let first = injected(&config, &pod);
        assert_eq!(
            first["metadata"]["labels"]["service.istio.io/canonical-name"], "istio-validation",
            "{key}"
        );
        assert_eq!(injected(&config, &first), first, "{key}");
    }
}

/// `fuzz/fuzz_targets/engine.rs`: a user's own `istio-init` carrying a float in a field of its
/// own is saved as JSON text in `proxy.istio.io/overrides`; reading the text back gave a float
/// one unit off in the last place (serde_json's default float reader is not exact), so the
/// second injection changed the pod. Floats now read back exactly, here and in every review.
#[test]
fn floats_in_saved_user_containers_read_back_exactly() {
    let config = Config::embedded();
    // Built in Rust, not read from text, so the float is exactly the one the fuzzer found.
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
        "spec": {"containers": [{"name": "app", "image": "app"}],
            "initContainers": [{"name": "istio-init", "futureField": 9.198_262_618_227_505e-121_f64}]}});
    let first = injected(&config, &pod);
    let init = first["spec"]["initContainers"]
        .as_array()
        .and_then(|l| l.iter().find(|c| c["name"] == "istio-init"))
        .unwrap();
    assert_eq!(
        init["futureField"],
        pod["spec"]["initContainers"][0]["futureField"]
    );
    // The second injection reads the user's container back from the saved text.
    assert!(
        first["metadata"]["annotations"]["proxy.istio.io/overrides"]
            .as_str()
            .is_some_and(|saved| saved.contains("futureField"))
    );
    assert_eq!(injected(&config, &first), first);
}

fn injected(config: &Config, pod: &Value) -> Value {
    let request = Request {
        pod,
        namespace: None,
        workload: None,
        native_sidecars: true,
    };
    match inject::inject(config, &request) {
        Ok(Outcome::Injected(injected)) => injected.pod,
        other => panic!("expected an injection, got {other:?}"),
    }
}

/// `fuzz/fuzz_targets/yaml_rendered.rs` found `$serde_json::private::RawValue:` read differently
/// by the two YAML readers. The cause was not YAML: with serde_json's `raw_value` feature on
/// (axum enables it), `serde_json::Value`'s own reading takes an object whose first key is that
/// string for embedded JSON text. A review body, a manifest or an annotation holding such a key
/// would have been changed; every outside value is now read with `value::Exact`.
#[test]
fn an_object_key_is_only_a_key() {
    let magic = "$serde_json::private::RawValue";
    let review = serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {"uid": "u", "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "operation": "CREATE", "namespace": "default",
            "object": {"metadata": {"name": "p", "labels": {magic: "[1,2]"}},
                "spec": {"containers": [{"name": "app", "image": "app"}]}}}
    }))
    .unwrap();
    let decoded = sidecar_injector::admission::Review::from_slice(&review).unwrap();
    assert_eq!(
        decoded.object.unwrap()["metadata"]["labels"],
        json!({magic: "[1,2]"})
    );
    for text in [format!("{magic}:"), format!("a:\n  {magic}: \"[1, 2]\"")] {
        let fast = yaml::parse_rendered(&text).map_err(|e| e.message);
        let full = yaml::parse_one(&text).map_err(|e| e.message);
        assert_eq!(fast, full, "{text:?}");
    }
    assert_eq!(
        yaml::parse_one(&format!("a:\n  {magic}: \"[1, 2]\"")).unwrap(),
        json!({"a": {magic: "[1, 2]"}})
    );
}
/// `fuzz/fuzz_targets/engine.rs`: a user-written `istio-proxy` whose ports share one
/// `containerPort` lost fields (each duplicate was merged into the first) and came out of a
/// second injection differently from the first. Duplicate keys now pair up in order.
#[test]
fn duplicate_ports_of_a_user_proxy_are_kept_as_written() {
    let config = Config::embedded();
    for ports in [
        json!([{"containerPort": 7, "name": "", "protocol": "UDP"}, {"containerPort": 7, "name": "app"}]),
        json!([{"containerPort": 7, "name": "app", "protocol": "UDP"}, {"containerPort": 7, "name": ""},
            {"containerPort": 7, "name": "x"}]),
    ] {
        let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "app", "image": "app"},
                {"name": "istio-proxy", "ports": ports.clone()}]}});
        let first = injected(&config, &pod);
        let proxy = first["spec"]["initContainers"]
            .as_array()
            .and_then(|l| l.iter().find(|c| c["name"] == "istio-proxy"))
            .unwrap();
        let user: Vec<&Value> = proxy["ports"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["containerPort"] == 7)
            .collect();
        assert_eq!(json!(user), ports);
        assert_eq!(injected(&config, &first), first);
    }
}

/// `fuzz/fuzz_targets/engine.rs`: a pod with two containers named `istio-proxy`, injected with
/// native sidecars, gained a third on the second injection (merging by name cannot tell which
/// of two same-named containers a rendered one belongs to). The API server rejects repeated
/// container names, so such a pod is now passed through unchanged, with the name in the reason.
#[test]
fn repeated_container_names_are_passed_through_unchanged() {
    let config = Config::embedded();
    for (init, containers, name) in [
        (
            json!([]),
            json!([{"name": "app"}, {"name": "istio-proxy", "image": ""}, {"name": "istio-proxy", "image": ""}]),
            "istio-proxy",
        ),
        (
            json!([{"name": "app"}]),
            json!([{"name": "app", "image": "app"}]),
            "app",
        ),
    ] {
        let pod = json!({"metadata": {"name": "p"},
            "spec": {"initContainers": init, "containers": containers}});
        let request = Request {
            pod: &pod,
            namespace: None,
            workload: None,
            native_sidecars: true,
        };
        match inject::inject(&config, &request) {
            Ok(Outcome::Skipped(SkipReason::RepeatedContainerName(repeated))) => {
                assert_eq!(repeated, name)
            }
            other => panic!("expected a skip, got {other:?}"),
        }
    }
}

/// A pod's own `istio-init` in `containers` meets the rendered one in `initContainers`: the
/// injected pod repeats a name, which the API server will reject, so the answer says why.
#[test]
fn a_pod_container_named_like_an_injected_one_is_warned_about() {
    let config = Config::embedded();
    let pod = json!({"metadata": {"name": "p"},
        "spec": {"containers": [{"name": "app", "image": "app"}, {"name": "istio-init", "image": "x"}]}});
    let request = Request {
        pod: &pod,
        namespace: None,
        workload: None,
        native_sidecars: false,
    };
    let Ok(Outcome::Injected(outcome)) = inject::inject(&config, &request) else {
        panic!("expected an injection");
    };
    assert!(
        outcome
            .warnings
            .iter()
            .any(|w| w.contains("\"istio-init\"") && w.contains("rename")),
        "{:?}",
        outcome.warnings
    );
    // Injecting the result again leaves it as it is.
    let again = Request {
        pod: &outcome.pod,
        ..request
    };
    assert!(matches!(
        inject::inject(&config, &again),
        Ok(Outcome::Skipped(SkipReason::RepeatedContainerName(_)))
    ));
}

/// `fuzz/fuzz_targets/admission_review.rs`: the review's head (what a replayed answer is built
/// from) read a body with bytes that are not UTF-8 in a field it skips, which the full read
/// refuses. A replay could not have answered it (its shape would have to be that of a body read
/// in full), but the head now refuses what the full read refuses: text that is not UTF-8, and
/// `\u` escapes of surrogates, which serde_json does not check in what it skips.
#[test]
fn the_head_of_a_review_refuses_what_the_review_refuses() {
    let review = |object: &[u8]| {
        [
            &br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"0df28fbd-5f5f-11e8-bc74-42010a800002","kind":{"group":"","version":"v1","kind":"Pod"},"operation":"CREATE","namespace":"batch","object":"#[..],
            object,
            b"}}",
        ]
        .concat()
    };
    for object in [
        &b"{\"spec\":{\"containers\":[{\"livenessProbe\":{\"tcpS\x9a\x9a\":{}}}]}}"[..],
        br#"{"spec":{"containers":[{"name":"\ud800"}]}}"#,
    ] {
        let body = review(object);
        assert!(sidecar_injector::admission::Review::from_slice(&body).is_err());
        assert_eq!(sidecar_injector::admission::Head::from_slice(&body), None);
    }
    let fine = review(br#"{"spec":{"containers":[{"name":"app"}]}}"#);
    assert!(sidecar_injector::admission::Head::from_slice(&fine).is_some());
}
