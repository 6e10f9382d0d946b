//! Answers reused for the replicas of one workload.
//!
//! When a ReplicaSet scales up, its pods reach the webhook as reviews that are the same text
//! except for two names the API server made up for each: the review's `uid`, and the name of the
//! service-account token volume (`kube-api-access-xxxxx`, listed in `volumes` and mounted in every
//! container). The engine is pure and treats such names as names: it copies them and compares
//! them with other names, it never reads into them. So the answer to a replica is the answer to
//! the first pod with those names renamed, and computing it again is wasted work.
//!
//! How a review is matched, exactly:
//! - Its *volatile names* are the uid and the token volume's name, when each is long enough and
//!   made only of letters, digits and `-` (so it reads the same in JSON text, in JSON text nested
//!   in an annotation and in a JSON pointer), and neither contains the other.
//! - Its *shape* is the request body with every occurrence of each volatile name replaced by a
//!   marker holding a NUL byte, which valid JSON text never contains raw. Every occurrence must be
//!   a whole token (not inside a longer run of name characters, not right after a backslash), so
//!   two reviews of one shape are the same text but for their volatile names, occurrence for
//!   occurrence, and one is valid JSON exactly when the other is.
//! - An answer (an injected pod's patch, warnings and findings) is replayed for a review of the
//!   same shape, the same config snapshot and the same native-sidecar mode, with the first
//!   review's volatile names renamed to this one's, of the same lengths.
//!
//! Opaque names are a property of the code, and templates are the operator's: a template could
//! slice a volume's name. So no answer is replayed on trust. The first pod of a shape is answered
//! and remembered; the second is answered in full too and compared with the replay, and only when
//! the two agree are later replicas replayed. Debug builds (every test and the fuzz targets)
//! compare every replay with a full answer.
//!
//! The server looks a review up from its head (`admission::Head`: the uid, the token volume's
//! name, what it logs) before it reads the pod, so a replayed answer never builds the pod as a
//! value; a review without a verified answer is read whole and goes to [`ReplicaMemo::decide`].
//!
//! Bounded: [`CAPACITY`] shapes and [`MAX_BYTES`] bytes, most recently used first. A new config
//! snapshot starts afresh.

use std::hash::{DefaultHasher, Hasher};
use std::sync::{Arc, Mutex, Weak};

use memchr::memmem;
use prometheus_client::metrics::counter::Counter;
use serde_json::Value;

use crate::admission::{AdmitError, Decision, Review};
use crate::config::Config;

/// Shapes remembered at most.
pub const CAPACITY: usize = 64;
/// Bytes held at most (shapes and answers); an answer that alone would take a quarter of it is
/// not remembered.
pub const MAX_BYTES: usize = 2 << 20;
/// Shorter names are too likely to occur in a pod by chance for a rename to be safe.
const MIN_NAME_LEN: usize = 8;
/// The prefix of the token volume the API server's ServiceAccount admission adds.
pub(crate) const TOKEN_VOLUME_PREFIX: &str = "kube-api-access-";

/// The replica memo: one per server, shared by every connection.
#[derive(Debug, Default)]
pub struct ReplicaMemo {
    state: Mutex<State>,
    /// Counts the answers replayed.
    replayed: Counter,
}

#[derive(Debug, Default)]
struct State {
    /// The config snapshot the entries were answered with. Held weakly, so an old config is not
    /// kept alive; its allocation stays reserved while this exists, so no later config can be
    /// mistaken for it.
    config: Weak<Config>,
    /// Most recently used first.
    entries: Vec<Entry>,
    bytes: usize,
}

#[derive(Debug)]
struct Entry {
    hash: u64,
    native: bool,
    shape: Box<[u8]>,
    /// The volatile names of the review that was answered, in the order of [`volatile_names`].
    names: Arc<[String]>,
    answer: Arc<Answer>,
    trust: Trust,
}

/// What the second replica of a shape showed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Trust {
    /// No second replica yet.
    Unverified,
    /// A second replica, answered in full, got the replay: later ones get it too.
    Verified,
    /// A second replica's full answer differed from the replay (a template reads into a name):
    /// this shape is always answered in full.
    Refuted,
}

/// An injected pod's answer; the other decisions cost little to compute and are not kept.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Answer {
    patch: Vec<u8>,
    warnings: Vec<String>,
    findings: Vec<&'static str>,
}

impl Answer {
    fn of(decision: &Decision) -> Option<Answer> {
        match decision {
            // A re-injection's update is rare and counted apart; it is answered in full.
            Decision::Patch {
                patch,
                warnings,
                findings,
                reinjection: false,
            } => Some(Answer {
                patch: patch.clone(),
                warnings: warnings.clone(),
                findings: findings.clone(),
            }),
            _ => None,
        }
    }

    fn into_decision(self) -> Decision {
        Decision::Patch {
            patch: self.patch,
            warnings: self.warnings,
            findings: self.findings,
            reinjection: false,
        }
    }

    fn size(&self) -> usize {
        self.patch.len() + self.warnings.iter().map(String::len).sum::<usize>()
    }

    /// This answer with each of `from` renamed to the matching one of `to`.
    fn renamed(&self, from: &[String], to: &[String]) -> Answer {
        let mut patch = self.patch.clone();
        let mut warnings = self.warnings.clone();
        for (old, new) in from.iter().zip(to) {
            patch = replace(&patch, old.as_bytes(), new.as_bytes());
            for w in &mut warnings {
                if w.contains(old.as_str()) {
                    *w = w.replace(old.as_str(), new.as_str());
                }
            }
        }
        Answer {
            patch,
            warnings,
            findings: self.findings.clone(),
        }
    }
}

/// What a lookup found for a review: an answer with the names it was given for.
enum Found {
    /// A verified answer: rename it for this review.
    Replay(Arc<Answer>, Arc<[String]>),
    /// An unverified answer: answer in full and compare with it, renamed.
    Candidate(Arc<Answer>, Arc<[String]>),
    /// A shape whose replay was refuted: answer in full.
    Refuted,
    Nothing,
}

/// What a review is looked up by: its shape, the native-sidecar mode it is answered in, and its
/// volatile names (the uid, then the token volume's name when it has one).
#[derive(Debug, Clone)]
pub struct Key {
    names: Vec<String>,
    shape: Box<[u8]>,
    hash: u64,
    native: bool,
}

impl Key {
    /// The key of the review whose request body is `body`; `None` when a name is unsuitable (see
    /// the module comment), which leaves the review to the engine.
    pub fn new(body: &[u8], uid: &str, token_volume: Option<&str>, native: bool) -> Option<Key> {
        let names = volatile_names(uid, token_volume)?;
        let shape = shape_of(body, &names)?;
        Some(Key {
            hash: hash_of(&shape),
            names: names.into_iter().map(str::to_owned).collect(),
            shape,
            native,
        })
    }

    /// The key of a decoded review.
    pub fn of_review(body: &[u8], review: &Review, native: bool) -> Option<Key> {
        Key::new(body, &review.uid, token_volume(review), native)
    }

    /// The native-sidecar mode the key was made for.
    pub fn native(&self) -> bool {
        self.native
    }

    fn same_shape(&self, entry: &Entry) -> bool {
        entry.hash == self.hash && entry.native == self.native && *entry.shape == *self.shape
    }
}

impl ReplicaMemo {
    /// A memo that counts its replays in `replayed`.
    pub fn new(replayed: Counter) -> ReplicaMemo {
        ReplicaMemo {
            state: Mutex::default(),
            replayed,
        }
    }

    /// The answer to the review with this key, when a verified replica of it was answered with
    /// this config. With debug assertions, `full()` answers it in full to compare.
    pub fn replay(
        &self,
        config: &Arc<Config>,
        key: &Key,
        full: impl FnOnce() -> Result<Decision, AdmitError>,
    ) -> Option<Decision> {
        let Found::Replay(answer, from) = self.find(config, key) else {
            return None;
        };
        Some(self.rename_and_count(&answer, &from, key, full))
    }

    /// `answer` (given for the names `from`) renamed for `key`, counted; with debug assertions,
    /// compared with `full()`.
    fn rename_and_count(
        &self,
        answer: &Answer,
        from: &[String],
        key: &Key,
        full: impl FnOnce() -> Result<Decision, AdmitError>,
    ) -> Decision {
        let replayed = answer.renamed(from, &key.names).into_decision();
        if cfg!(debug_assertions) {
            assert_eq!(
                full().as_ref().ok().and_then(Answer::of),
                Answer::of(&replayed),
                "a replayed replica answer differs from the full answer"
            );
        }
        self.replayed.inc();
        replayed
    }

    /// The answer to a decoded review with this key (`None`: not one to remember): replayed from
    /// a verified replica, else `decide()`, remembered for the next replicas or checked against
    /// the replay of an earlier one.
    pub fn decide(
        &self,
        config: &Arc<Config>,
        key: Option<Key>,
        decide: impl Fn() -> Result<Decision, AdmitError>,
    ) -> Result<Decision, AdmitError> {
        let Some(key) = key else {
            return decide();
        };
        match self.find(config, &key) {
            Found::Replay(answer, from) => Ok(self.rename_and_count(&answer, &from, &key, &decide)),
            Found::Candidate(answer, from) => {
                let decision = decide()?;
                let agrees = Answer::of(&decision) == Some(answer.renamed(&from, &key.names));
                self.settle(config, &key, agrees);
                Ok(decision)
            }
            Found::Refuted => decide(),
            Found::Nothing => {
                let decision = decide()?;
                if let Some(answer) = Answer::of(&decision) {
                    self.remember(config, key, answer);
                }
                Ok(decision)
            }
        }
    }

    /// Answers replayed so far (also counted in the metric the memo was made with).
    pub fn replayed(&self) -> u64 {
        self.replayed.get()
    }

    /// Shapes remembered now (for tests and metrics).
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock leaves only a cache behind; its entries are still
        // whole (every change is a single push, remove or flag), so keep using it.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn find(&self, config: &Arc<Config>, key: &Key) -> Found {
        let mut state = self.lock();
        if !std::ptr::eq(state.config.as_ptr(), Arc::as_ptr(config)) {
            return Found::Nothing;
        }
        let Some(at) = state.entries.iter().position(|e| {
            key.same_shape(e)
                && e.names.len() == key.names.len()
                && e.names
                    .iter()
                    .zip(&key.names)
                    .all(|(a, b)| a.len() == b.len())
        }) else {
            return Found::Nothing;
        };
        let entry = state.entries.remove(at);
        // Renamed by the caller, after the lock is released.
        let shared = || (Arc::clone(&entry.answer), Arc::clone(&entry.names));
        let found = match entry.trust {
            Trust::Verified => {
                let (answer, names) = shared();
                Found::Replay(answer, names)
            }
            Trust::Unverified => {
                let (answer, names) = shared();
                Found::Candidate(answer, names)
            }
            Trust::Refuted => Found::Refuted,
        };
        state.entries.insert(0, entry);
        found
    }

    /// Records whether the full answer to a second replica agreed with the replay.
    fn settle(&self, config: &Arc<Config>, key: &Key, agrees: bool) {
        let mut state = self.lock();
        if !std::ptr::eq(state.config.as_ptr(), Arc::as_ptr(config)) {
            return;
        }
        let Some(entry) = state.entries.iter_mut().find(|e| key.same_shape(e)) else {
            return;
        };
        if agrees {
            entry.trust = Trust::Verified;
        } else {
            entry.trust = Trust::Refuted;
            tracing::warn!(
                "the answer to a replica is not its first replica's answer with the generated names renamed (does a template read into the token volume's name?); pods of this shape are answered in full"
            );
        }
    }

    fn remember(&self, config: &Arc<Config>, key: Key, answer: Answer) {
        let size = key.shape.len() + answer.size();
        if size > MAX_BYTES / 4 {
            return;
        }
        let mut state = self.lock();
        if !std::ptr::eq(state.config.as_ptr(), Arc::as_ptr(config)) {
            *state = State {
                config: Arc::downgrade(config),
                ..State::default()
            };
        }
        // Another connection may have answered the same shape meanwhile.
        if state.entries.iter().any(|e| key.same_shape(e)) {
            return;
        }
        while state.entries.len() >= CAPACITY || state.bytes + size > MAX_BYTES {
            let Some(old) = state.entries.pop() else {
                break;
            };
            state.bytes -= old.shape.len() + old.answer.size();
        }
        state.bytes += size;
        state.entries.insert(
            0,
            Entry {
                hash: key.hash,
                native: key.native,
                shape: key.shape,
                names: key.names.into(),
                answer: Arc::new(answer),
                trust: Trust::Unverified,
            },
        );
    }
}

/// The first volume of the review's pod whose name starts with [`TOKEN_VOLUME_PREFIX`].
fn token_volume(review: &Review) -> Option<&str> {
    review
        .object
        .as_ref()
        .and_then(|pod| pod.pointer("/spec/volumes"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|v| v.get("name").and_then(Value::as_str))
        .find(|name| name.starts_with(TOKEN_VOLUME_PREFIX))
}

/// The uid and the token volume's name, when each is suitable (see the module comment).
fn volatile_names<'a>(uid: &'a str, token_volume: Option<&'a str>) -> Option<Vec<&'a str>> {
    let mut names = vec![uid];
    names.extend(token_volume);
    let suitable = |name: &str| {
        name.len() >= MIN_NAME_LEN && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    let apart = names.iter().enumerate().all(|(i, a)| {
        names
            .iter()
            .skip(i + 1)
            .all(|b| !a.contains(b) && !b.contains(a))
    });
    (names.iter().all(|n| suitable(n)) && apart).then_some(names)
}

/// The body with each volatile name replaced by `NUL, index`; `None` when a name occurs inside a
/// longer run of name characters (letters, digits, `-`) or right after a backslash (where it
/// could be part of an escape). Every occurrence is then a whole token, so no two overlap and
/// each is replaced: a review has the shape of another exactly when it is the other's text with
/// those tokens renamed, and one is valid JSON exactly when the other is.
fn shape_of(body: &[u8], names: &[&str]) -> Option<Box<[u8]>> {
    let name_char = |b: &u8| b.is_ascii_alphanumeric() || *b == b'-';
    let mut shape = body.to_vec();
    for (i, name) in names.iter().enumerate() {
        let whole = memmem::find_iter(&shape, name.as_bytes()).all(|at| {
            let before = at.checked_sub(1).and_then(|b| shape.get(b));
            let after = shape.get(at + name.len());
            !before.is_some_and(|b| name_char(b) || *b == b'\\') && !after.is_some_and(name_char)
        });
        if !whole {
            return None;
        }
        shape = replace(&shape, name.as_bytes(), &[0, u8::try_from(i).ok()?]);
    }
    Some(shape.into_boxed_slice())
}

fn hash_of(shape: &[u8]) -> u64 {
    let mut hasher = DefaultHasher::new();
    hasher.write(shape);
    hasher.finish()
}

/// `haystack` with every occurrence of `from` (left to right, not overlapping) replaced by `to`.
fn replace(haystack: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(haystack.len());
    let mut rest = 0;
    for at in memmem::find_iter(haystack, from) {
        out.extend_from_slice(&haystack[rest..at]);
        out.extend_from_slice(to);
        rest = at + from.len();
    }
    out.extend_from_slice(&haystack[rest..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admission;
    use crate::config::Sources;
    use serde_json::json;

    /// A ReplicaSet's pod as the API server sends it: its uid and token volume name made up.
    fn body(uid: &str, token: &str, app: &str) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {"uid": uid, "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "operation": "CREATE", "namespace": "default",
                "object": {"metadata": {"generateName": "web-5d8f7b9c6-", "namespace": "default",
                        "labels": {"app": app},
                        "annotations": {"proxy.istio.io/config": "holdApplicationUntilProxyStarts: true"}},
                    "spec": {"containers": [{"name": "web", "image": "web",
                            "volumeMounts": [{"name": token, "readOnly": true,
                                "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}]},
                            {"name": "istio-proxy", "volumeMounts": [{"name": token, "mountPath": "/t"}]}],
                        "volumes": [{"name": token, "projected": {"sources": [
                            {"serviceAccountToken": {"path": "token"}}]}}]}}}
        }))
        .unwrap()
    }

    fn answer(memo: &ReplicaMemo, config: &Arc<Config>, body: &[u8]) -> (Vec<u8>, Vec<String>) {
        let review = Review::from_slice(body).unwrap();
        let key = Key::of_review(body, &review, false);
        match memo.decide(config, key, || admission::decide(config, &review, false)) {
            Ok(Decision::Patch {
                patch, warnings, ..
            }) => (patch, warnings),
            other => panic!("{other:?}"),
        }
    }

    fn trust(memo: &ReplicaMemo) -> Vec<Trust> {
        memo.lock().entries.iter().map(|e| e.trust).collect()
    }

    const UIDS: [&str; 3] = [
        "705ab4f5-6393-11e8-b7cc-42010a800001",
        "705ab4f5-6393-11e8-b7cc-42010a800002",
        "705ab4f5-6393-11e8-b7cc-42010a800003",
    ];
    const TOKENS: [&str; 3] = [
        "kube-api-access-x7k2p",
        "kube-api-access-b2d4q",
        "kube-api-access-9zz5m",
    ];

    #[test]
    fn replicas_get_the_first_answer_renamed_once_a_second_one_agreed() {
        let config = Arc::new(Config::embedded());
        let memo = ReplicaMemo::default();
        let mut answers = Vec::new();
        for (i, (uid, token)) in UIDS.iter().zip(TOKENS).enumerate() {
            answers.push(answer(&memo, &config, &body(uid, token, "web")));
            let expected = [Trust::Unverified, Trust::Verified, Trust::Verified][i];
            assert_eq!(trust(&memo), vec![expected]);
        }
        // The user's istio-proxy is saved with its mounts, so the token name is in the patch;
        // each replica's answer names its own token and no other (debug builds also compared the
        // third, replayed, answer with a full one).
        for (i, (patch, _)) in answers.iter().enumerate() {
            let text = String::from_utf8_lossy(patch);
            for (j, token) in TOKENS.iter().enumerate() {
                assert_eq!(text.contains(token), i == j, "answer {i}, token {j}");
            }
        }
        // Another workload is another shape.
        answer(&memo, &config, &body(UIDS[0], TOKENS[0], "api"));
        assert_eq!(memo.len(), 2);
    }

    #[test]
    fn a_template_that_reads_into_a_name_refutes_the_replay() {
        let mut sources = Sources::embedded();
        sources.config = "templates:\n  t: |\n    metadata:\n      annotations:\n        suffix: {{ spec.volumes[0].name[-5:] }}\n    spec:\n      containers:\n      - name: istio-proxy\n        image: proxy\ndefaultTemplates: [t]\npolicy: enabled\n".into();
        let config = Arc::new(Config::from_sources(&sources).unwrap());
        let memo = ReplicaMemo::default();
        for (i, (uid, token)) in UIDS.iter().zip(TOKENS).enumerate() {
            let (patch, _) = answer(&memo, &config, &body(uid, token, "web"));
            let suffix = &token[token.len() - 5..];
            let text = String::from_utf8_lossy(&patch);
            assert!(
                text.contains(&format!("/suffix\",\"value\":\"{suffix}\"")),
                "answer {i}: {text}"
            );
            let expected = [Trust::Unverified, Trust::Refuted, Trust::Refuted][i];
            assert_eq!(trust(&memo), vec![expected]);
        }
    }

    #[test]
    fn a_new_config_starts_afresh_and_unsuitable_names_are_not_remembered() {
        let memo = ReplicaMemo::default();
        let first = Arc::new(Config::embedded());
        answer(&memo, &first, &body(UIDS[0], TOKENS[0], "web"));
        assert_eq!(memo.len(), 1);
        let second = Arc::new(Config::embedded());
        answer(&memo, &second, &body(UIDS[1], TOKENS[1], "web"));
        assert_eq!(trust(&memo), vec![Trust::Unverified]);
        // A short uid, a name with a character JSON or a pointer would escape: answered, not kept.
        for body in [
            body("u-1", TOKENS[0], "x"),
            body(UIDS[2], "kube-api-access-a/b~c", "y"),
        ] {
            answer(&memo, &second, &body);
        }
        assert_eq!(memo.len(), 1);
    }

    #[test]
    fn shapes_differ_by_names_only_and_never_by_overlapping_ones() {
        let names = ["abcdefgh-1", "kube-api-access-abcde"];
        let shape = shape_of(
            b"{\"a\":\"abcdefgh-1\",\"b\":\"kube-api-access-abcde\"}",
            &names,
        )
        .unwrap();
        assert_eq!(&*shape, b"{\"a\":\"\0\0\",\"b\":\"\0\x01\"}");
        // Inside a longer token, or overlapping itself: no shape.
        assert!(shape_of(b"\"aaaaaaaaab\"", &["aaaaaaaab"]).is_none());
        assert!(shape_of(b"\"xxxx-xxxx-xxxx\"", &["xxxx-xxxx"]).is_none());
        assert!(shape_of(b"[\"xxxx-xxxx\",\"xxxx-xxxx.1\"]", &["xxxx-xxxx"]).is_some());
        // After a backslash a name could be an escape's: `\u0041bcdefgh` renamed to
        // `\ud800zzzzzzz` would no longer be JSON.
        assert!(shape_of(b"[\"\\u0041bcdefgh\"]", &["u0041bcdefgh"]).is_none());
        assert_eq!(replace(b"a.b.a", b"a", b"zz"), b"zz.b.zz");
    }
}
