//! `serve --tls-self-signed` through the real binary: two servers on one machine, each with its
//! own CA file, and the `curl` line each prints works against it.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

struct Server {
    child: Child,
    /// The CA file named in the first line.
    ca_file: String,
    /// The command of the `Try:` line.
    curl: String,
}

fn start(tmpdir: &Path) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sidecar-injector"))
        .args(["serve", "--tls-self-signed"])
        .args(["--addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0"])
        .args(["--shutdown-grace", "0", "--log-level", "warn"])
        .args(["--native-sidecars", "false"])
        // The default CA path is in the system temp directory: this test's own.
        .env("TMPDIR", tmpdir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the server");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let told = lines.next().expect("a first line").expect("text");
    let ca_file = told
        .rsplit_once("its CA is in ")
        .map(|(_, f)| f.to_string())
        .unwrap_or_else(|| panic!("no CA file in {told:?}"));
    let try_line = lines.next().expect("a Try line").expect("text");
    let curl = try_line
        .strip_prefix("Try: ")
        .unwrap_or_else(|| panic!("{try_line:?}"))
        .to_string();
    Server {
        child,
        ca_file,
        curl,
    }
}

impl Drop for Server {
    /// A failed assertion must not leave the server running.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn stop(server: &mut Server) {
    let pid = server.child.id().to_string();
    let killed = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(killed.success());
    let status = server.child.wait().unwrap();
    assert!(status.success(), "{status:?}");
}

#[test]
fn two_self_signed_servers_each_keep_their_own_ca_and_both_curl_lines_work() {
    let tmp = tempfile::tempdir().unwrap();
    let mut first = start(tmp.path());
    let mut second = start(tmp.path());
    assert_ne!(first.ca_file, second.ca_file);
    assert!(first.curl.contains(&first.ca_file), "{}", first.curl);
    assert!(second.curl.contains(&second.ca_file), "{}", second.curl);

    // The first server's line still works after the second one started.
    for server in [&first, &second] {
        let out = Command::new("sh")
            .args(["-c", &format!("{} --silent --show-error", server.curl)])
            .output()
            .expect("run curl");
        let body = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && body.contains("\"patchType\":\"JSONPatch\""),
            "{}: {body}{}",
            server.curl,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // Each CA file is its server's and goes with it.
    stop(&mut first);
    assert!(!Path::new(&first.ca_file).exists());
    assert!(Path::new(&second.ca_file).exists());
    stop(&mut second);
    assert!(!Path::new(&second.ca_file).exists());
}
