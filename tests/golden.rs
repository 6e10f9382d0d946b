//! Golden tests of `sidecar-injector inject`, through the real binary.
//!
//! Each `tests/golden/cases/NAME.yaml` is a manifest whose first line says how to run it
//! (`# golden: native=true values=FILE`). Its expected result is `NAME.injected.yaml` (what the
//! command printed: standard error as `# ` lines, then the manifest) or, for a manifest the
//! command refuses, `NAME.error.txt`. Regenerate on purpose with `UPDATE_GOLDEN=1 cargo test
//! --test golden`, and review the diff like code.
//!
//! Every injected case is also injected a second time: the output must not change.

use std::path::{Path, PathBuf};
use std::process::Command;

fn cases_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/cases")
}

struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
}

fn run(args: &[String], stdin: Option<&str>) -> Run {
    use std::io::Write;
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sidecar-injector"));
    // Relative paths keep machine-specific directories out of the expected output.
    cmd.current_dir(cases_dir()).arg("inject").args(args);
    cmd.stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().expect("run the binary");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes())
            .expect("write stdin");
    } else {
        drop(child.stdin.take());
    }
    let out = child.wait_with_output().expect("binary output");
    Run {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The flags a case asks for in its first line.
fn flags(case: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(case).expect("case file");
    let header = text.lines().next().unwrap_or("");
    let Some(spec) = header.strip_prefix("# golden:") else {
        panic!("{} must start with a `# golden:` line", case.display());
    };
    let mut args = Vec::new();
    for item in spec.split_whitespace() {
        match item.split_once('=') {
            Some(("native", v)) => args.extend(["--native-sidecars".to_string(), v.to_string()]),
            Some(("values", f)) => args.extend(["--values".to_string(), f.to_string()]),
            Some(("mesh", f)) => args.extend(["--mesh".to_string(), f.to_string()]),
            Some(("revision", r)) => args.extend(["--revision".to_string(), r.to_string()]),
            _ => panic!("{}: unknown golden option {item:?}", case.display()),
        }
    }
    args
}

fn rendered(r: &Run) -> String {
    let mut out = String::new();
    for line in r.stderr.lines() {
        out.push_str("# ");
        out.push_str(line);
        out.push('\n');
    }
    out.push_str(&r.stdout);
    out
}

fn compare(expected: &Path, actual: &str) -> Option<String> {
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(expected, actual).expect("write golden file");
        return None;
    }
    let want = std::fs::read_to_string(expected).unwrap_or_default();
    (want != actual).then(|| {
        format!(
            "{} differs (UPDATE_GOLDEN=1 regenerates):\n--- expected\n{want}\n--- actual\n{actual}",
            expected.display()
        )
    })
}

#[test]
fn golden_cases() {
    let mut cases: Vec<PathBuf> = std::fs::read_dir(cases_dir())
        .expect("cases dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            name.ends_with(".yaml")
                && !name.ends_with(".injected.yaml")
                && !name.contains(".values.")
                && !name.contains(".mesh.")
        })
        .collect();
    cases.sort();
    assert!(cases.len() >= 15, "golden cases missing: {cases:?}");

    let mut failures = Vec::new();
    for case in &cases {
        let stem = case
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("case")
            .to_string();
        let mut args = flags(case);
        args.extend(["-f".to_string(), format!("{stem}.yaml")]);
        let first = run(&args, None);
        let expected_ok = cases_dir().join(format!("{stem}.injected.yaml"));
        let expected_err = cases_dir().join(format!("{stem}.error.txt"));
        if first.ok {
            if let Some(diff) = compare(&expected_ok, &rendered(&first)) {
                failures.push(diff);
            }
            if expected_err.exists() && std::env::var_os("UPDATE_GOLDEN").is_none() {
                failures.push(format!("{stem}: expected a refusal, but it injected"));
            }
            // Injecting the output again changes nothing.
            let mut again_args = flags(case);
            again_args.extend(["-f".to_string(), "-".to_string()]);
            let second = run(&again_args, Some(&first.stdout));
            if !second.ok || second.stdout != first.stdout {
                failures.push(format!(
                    "{stem}: injecting twice changed the output\n--- once\n{}\n--- twice\n{}{}",
                    first.stdout, second.stdout, second.stderr
                ));
            }
        } else {
            if let Some(diff) = compare(&expected_err, &first.stderr) {
                failures.push(diff);
            }
            if expected_ok.exists() && std::env::var_os("UPDATE_GOLDEN").is_none() {
                failures.push(format!(
                    "{stem}: expected an injection, but it was refused:\n{}",
                    first.stderr
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
