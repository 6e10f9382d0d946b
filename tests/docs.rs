//! What the docs claim about the commands holds.

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn markdown_files() -> Vec<PathBuf> {
    let mut files = vec![
        root().join("README.md"),
        root().join("charts/sidecar-injector/README.md"),
    ];
    for entry in std::fs::read_dir(root().join("docs")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "md") {
            files.push(path);
        }
    }
    files
}

/// Shell commands in the docs, continuation lines joined.
fn commands(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let line = line.trim();
        if let Some(part) = line.strip_suffix('\\') {
            current.push_str(part);
            continue;
        }
        current.push_str(line);
        out.push(std::mem::take(&mut current));
    }
    out
}

#[test]
fn every_helm_install_line_sets_the_image() {
    // The chart's default image is a bare name that no registry serves.
    let mut bad = Vec::new();
    for file in markdown_files() {
        let Ok(text) = std::fs::read_to_string(&file) else {
            continue;
        };
        for command in commands(&text) {
            if command.starts_with("helm install ") && !command.contains("image.repository") {
                bad.push(format!("{}: {command}", file.display()));
            }
        }
    }
    assert!(
        bad.is_empty(),
        "helm install without an image:\n{}",
        bad.join("\n")
    );
}

fn run(dir: &Path, args: &[&str]) -> (String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_sidecar-injector"))
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap();
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_readme_shows_what_the_commands_print() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let dir = root().join("docs/examples");
    let (_, inject_stderr) = run(&dir, &["inject", "-f", "app.yaml"]);
    let (analyze_stdout, _) = run(&dir, &["analyze", "-f", "app.yaml"]);
    for line in inject_stderr.lines().chain(analyze_stdout.lines()) {
        assert!(
            readme.contains(line),
            "README.md does not show this line of the real output:\n{line}"
        );
    }
    assert!(
        inject_stderr.starts_with("injected Deployment/shop/web\n"),
        "{inject_stderr}"
    );
}

#[test]
fn native_sidecar_advice_names_the_version_auto_waits_for() {
    // Istio's auto mode, and ours (DEFAULT_MIN_KUBELET), turn native sidecars on from 1.33.
    let min = sidecar_injector::cluster::DEFAULT_MIN_KUBELET;
    let version = format!("Kubernetes {}.{}", min.major, min.minor);
    let dir = root().join("docs/examples");
    let (_, stderr) = run(&dir, &["inject", "-f", "app.yaml"]);
    assert!(stderr.contains(&format!("{version} or later")), "{stderr}");
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(
        tmp.path().join("job.yaml"),
        "apiVersion: batch/v1\nkind: Job\nmetadata: {name: j}\nspec:\n  template:\n    spec:\n      restartPolicy: Never\n      containers: [{name: j, image: j:1}]\n",
    )
    .unwrap();
    let (_, warning) = run(tmp.path(), &["inject", "-f", "job.yaml"]);
    assert!(warning.contains("never complete"), "{warning}");
    assert!(warning.contains(&format!("({version}+)")), "{warning}");
    let (help, _) = run(&dir, &["inject", "--help"]);
    assert!(help.contains(&format!("({version}+)")), "{help}");
}
