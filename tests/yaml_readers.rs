//! What `inject` writes means to YAML 1.1 readers what it meant in the input.
//!
//! kubectl reads YAML 1.1 (go-yaml v2): the checks here read our output with PyYAML, the YAML
//! 1.1 reader at hand (`tests/yaml11_read.py`; `scripts/test.sh` installs it), in two ways:
//!
//! - with go-yaml v2's resolution of plain scalars (kubectl's reading), the whole output,
//!   documents passed through as written included, must equal what `inject -o json` says it
//!   wrote;
//! - with PyYAML's own rules, every document as our writer writes it must read back as the same
//!   JSON.
//!
//! Over every golden case and `tests/golden/yaml/tricky-scalars.yaml`, whose reading by kubectl
//! itself is recorded in `tricky-scalars.kubectl.json` and must equal ours (as must our reading
//! of `merge-keys.yaml`, YAML merge keys).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn tricky() -> PathBuf {
    root().join("tests/golden/yaml/tricky-scalars.yaml")
}

fn inject(dir: &Path, args: &[String]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_sidecar-injector"))
        .current_dir(dir)
        .arg("inject")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run the binary");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The flags a golden case asks for in its `# golden:` line.
fn golden_flags(text: &str) -> Vec<String> {
    let header = text.lines().next().unwrap_or("");
    let mut args = Vec::new();
    for item in header
        .strip_prefix("# golden:")
        .unwrap_or("")
        .split_whitespace()
    {
        let (k, v) = item.split_once('=').expect("golden option");
        let flag = match k {
            "native" => "--native-sidecars",
            "values" => "--values",
            "mesh" => "--mesh",
            "revision" => "--revision",
            other => panic!("unknown golden option {other}"),
        };
        args.extend([flag.to_string(), v.to_string()]);
    }
    args
}

fn json_stream(text: &str) -> Vec<Value> {
    serde_json::Deserializer::from_str(text)
        .into_iter::<Value>()
        .collect::<Result<_, _>>()
        .expect("JSON documents")
}

/// Runs the YAML 1.1 reader over (YAML, expected JSON) pairs; `Err` with its message when a
/// reading differs.
fn read_with_yaml_1_1(mode: &str, pairs: &[(PathBuf, PathBuf)]) -> Result<(), String> {
    let out = Command::new("python3")
        .arg(root().join("tests/yaml11_read.py"))
        .arg(mode)
        .args(pairs.iter().flat_map(|(y, j)| [y, j]))
        .output()
        .expect("python3 with PyYAML is needed here; scripts/test.sh installs it");
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Our reading of `tests/golden/yaml/NAME.yaml` against kubectl's, recorded in
/// `NAME.kubectl.json` by scripts/record-kubectl-reading.sh.
fn assert_read_as_kubectl_reads(name: &str) {
    // The record was made with every document's kind replaced by an unknown one, so that
    // kubectl keeps the values as read; do the same here.
    let dir = root().join("tests/golden/yaml");
    let text = std::fs::read_to_string(dir.join(format!("{name}.yaml"))).unwrap();
    let renamed: String = text
        .lines()
        .map(|l| {
            if l.starts_with("apiVersion: ") {
                "apiVersion: example.com/v1".to_string()
            } else if l.starts_with("kind: ") {
                "kind: Tricky".to_string()
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    let ours = sidecar_injector::yaml::parse_documents(&renamed).unwrap();
    let record = std::fs::read_to_string(dir.join(format!("{name}.kubectl.json"))).unwrap();
    let kubectl = json_stream(&record);
    assert_eq!(ours.len(), kubectl.len(), "{name}");
    for (ours, kubectl) in ours.iter().zip(&kubectl) {
        assert_eq!(ours, kubectl, "{name}");
    }
}

#[test]
fn our_reading_of_the_tricky_scalars_is_kubectls() {
    assert_read_as_kubectl_reads("tricky-scalars");
}

#[test]
fn merge_keys_merge_as_kubectl_merges_them() {
    // go-yaml v2's order: a key after `<<` wins, a key before it loses, earlier mappings of a
    // list win.
    assert_read_as_kubectl_reads("merge-keys");
}

#[test]
fn a_merge_key_that_is_not_a_mapping_is_refused() {
    for text in ["a:\n  <<: 1\n", "a:\n  <<: [{b: 1}, 2]\n"] {
        let err = sidecar_injector::yaml::parse_documents(text).unwrap_err();
        assert!(
            err.to_string()
                .contains("a merge key (<<) takes a mapping or a list of mappings"),
            "{err}"
        );
    }
}

#[test]
fn every_output_reads_back_the_same_under_yaml_1_1() {
    let tmp = tempfile::tempdir().unwrap();
    let cases_dir = root().join("tests/golden/cases");
    let mut cases: Vec<PathBuf> = std::fs::read_dir(&cases_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy();
            name.ends_with(".yaml")
                && !name.ends_with(".injected.yaml")
                && !name.contains(".values.")
                && !name.contains(".mesh.")
        })
        .collect();
    cases.sort();
    cases.push(tricky());

    let mut as_kubectl = Vec::new();
    let mut as_written = Vec::new();
    for case in &cases {
        let text = std::fs::read_to_string(case).unwrap();
        let mut args = golden_flags(&text);
        args.extend(["-f".to_string(), case.display().to_string()]);
        let (ok, yaml, _) = inject(&cases_dir, &args);
        if !ok {
            continue; // a refusal case: nothing is written
        }
        let mut json_args = args.clone();
        json_args.extend(["-o".to_string(), "json".to_string()]);
        let (ok, json, err) = inject(&cases_dir, &json_args);
        assert!(ok, "{}: {err}", case.display());

        let name = case.file_stem().unwrap().to_string_lossy().into_owned();
        let yaml_path = tmp.path().join(format!("{name}.out.yaml"));
        let json_path = tmp.path().join(format!("{name}.out.json"));
        std::fs::write(&yaml_path, &yaml).unwrap();
        std::fs::write(&json_path, &json).unwrap();
        // Every document written anew by our writer, for PyYAML's own rules.
        let written: Vec<String> = json_stream(&json)
            .iter()
            .map(sidecar_injector::yaml::to_string)
            .collect();
        let rewritten = tmp.path().join(format!("{name}.rewritten.yaml"));
        std::fs::write(&rewritten, written.join("---\n")).unwrap();
        as_kubectl.push((yaml_path, json_path.clone()));
        as_written.push((rewritten, json_path));
    }
    assert!(
        as_kubectl.len() > 20,
        "only {} cases checked",
        as_kubectl.len()
    );
    let failures: Vec<String> = [
        read_with_yaml_1_1("kubectl", &as_kubectl),
        read_with_yaml_1_1("stock", &as_written),
    ]
    .into_iter()
    .filter_map(Result::err)
    .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn an_injected_workload_keeps_what_its_scalars_meant() {
    // The Deployment of the tricky file is injected: its own fields must mean to kubectl what
    // they meant in the input (`defaultMode: 0400` is 256, `"yes"` stays a string, ...).
    let (ok, json, err) = inject(
        &root(),
        &[
            "-f".into(),
            tricky().display().to_string(),
            "-o".into(),
            "json".into(),
        ],
    );
    assert!(ok, "{err}");
    let out = json_stream(&json);
    let record = json_stream(
        &std::fs::read_to_string(root().join("tests/golden/yaml/tricky-scalars.kubectl.json"))
            .unwrap(),
    );
    let (ours, kubectl) = (&out[1], &record[1]);
    for pointer in [
        "/metadata/labels",
        "/metadata/annotations",
        "/spec/replicas",
        "/spec/template/metadata/labels/legacy",
        "/spec/template/metadata/labels/build",
        "/spec/template/spec/containers/0/env",
    ] {
        assert_eq!(ours.pointer(pointer), kubectl.pointer(pointer), "{pointer}");
        assert!(ours.pointer(pointer).is_some(), "{pointer}");
    }
    // The pod's own volume follows the injected ones, as the strategic merge orders them.
    let own_volume = |doc: &Value| {
        let name = kubectl
            .pointer("/spec/template/spec/volumes/0/name")
            .cloned();
        doc.pointer("/spec/template/spec/volumes")
            .and_then(Value::as_array)
            .and_then(|v| v.iter().find(|v| v.get("name") == name.as_ref()))
            .cloned()
    };
    assert!(own_volume(kubectl).is_some());
    assert_eq!(own_volume(ours), own_volume(kubectl));
    assert_eq!(
        own_volume(ours).and_then(|v| v.pointer("/secret/defaultMode").cloned()),
        Some(Value::from(256))
    );
    // And the ConfigMap, not a workload, is written as it came.
    let (_, yaml, _) = inject(&root(), &["-f".into(), tricky().display().to_string()]);
    let input = std::fs::read_to_string(tricky()).unwrap();
    let configmap_end = input.find("---\n").unwrap();
    assert!(yaml.starts_with(&input[..configmap_end]), "{yaml}");
}

#[test]
fn every_pair_of_tricky_pieces_reads_back_under_yaml_1_1() {
    // Each string of one or two pieces that trip readers up, as a key and as a value, written by
    // our writer and read by PyYAML with its own rules and with kubectl's.
    let pieces = [
        "yes",
        "No",
        "on",
        "y",
        "N",
        "~",
        "null",
        "0",
        "0400",
        "0o17",
        "0x1F",
        "1_000",
        "+",
        "-",
        ".",
        "e3",
        "1e3",
        "5.",
        ".5",
        "1:20",
        "2024-01-01",
        "12:30:00",
        "=",
        "<<",
        ":",
        ": ",
        " #",
        "#",
        "- ",
        "? ",
        "'",
        "\"",
        "\\",
        " ",
        "\n",
        "\t",
        "\u{85}",
        "\u{7f}",
        "\u{2028}",
        "\u{feff}",
        "é",
        "a",
        "{",
        "}",
        "[",
        "]",
        ",",
        "&",
        "*",
        "!",
        "|",
        ">",
        "%",
        "@",
        "`",
        "---",
        "...",
        ".inf",
        ".NaN",
        "true",
        "False",
    ];
    let mut map = serde_json::Map::new();
    let mut list = Vec::new();
    for a in pieces {
        for b in std::iter::once("").chain(pieces) {
            let s = format!("{a}{b}");
            map.insert(s.clone(), Value::from(s.clone()));
            list.push(Value::from(s));
        }
    }
    let value = serde_json::json!({"keys": map, "values": list});
    let tmp = tempfile::tempdir().unwrap();
    let yaml = tmp.path().join("pairs.yaml");
    let json = tmp.path().join("pairs.json");
    std::fs::write(&yaml, sidecar_injector::yaml::to_string(&value)).unwrap();
    std::fs::write(&json, value.to_string()).unwrap();
    for mode in ["stock", "kubectl"] {
        if let Err(e) = read_with_yaml_1_1(mode, &[(yaml.clone(), json.clone())]) {
            panic!("{e}");
        }
    }
}
