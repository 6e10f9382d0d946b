//! Answers reused for the replicas of one workload, equal to a full answer by construction.
//!
//! When a ReplicaSet scales up, its pods reach the webhook as reviews that are the same text
//! except for two names the API server made up for each: the review's `uid` (a UUID), and the
//! name of the service-account token volume (`kube-api-access-` and five characters of
//! [`TOKEN_ALPHABET`], listed in `volumes` and mounted in containers). Injecting each again is
//! wasted work, but reusing an answer is only right where the answer cannot depend on those
//! names other than by copying them. Comparing two answers shows that for two names, not for all
//! (a template that slices a name agrees for two names that end alike), so nothing here is
//! sampled; each step below holds for every name the API server can generate.
//!
//! - **The uid** is masked where the head read it (`admission::Head::uid_span`), and nowhere
//!   else: two reviews of one shape are then the same text but for `request.uid`, which the
//!   engine never reads. The answer is not renamed for it; a uid that also occurs in the pod is
//!   part of the shape like any other text.
//! - **The token volume's name** is accepted only in the API server's form, and only when every
//!   occurrence of the prefix `kube-api-access-` in the body is that name, written as the whole
//!   string value of a `"name"` key, and no `\u` escape in the body stands for a letter, digit or
//!   `-` (so every decoded string that holds the prefix holds it in the text). Those occurrences
//!   are masked. Two reviews of one shape are then the same pod but for that name, in the same
//!   places; one is valid JSON exactly when the other is.
//! - **The answer remembered is the sentinel's**: the first review of a shape is injected with
//!   its token name replaced by [`SENTINEL`], a name of the same length and form that the API
//!   server never generates (its last five characters are outside the alphabet) and so never in
//!   a body we accept. The shape is replayed only when (a) no template read or wrote a string
//!   holding the prefix (`inject::renders` tracks this for every render, reused or not: a
//!   template's output depends on nothing but its reads), so templates neither see nor write the
//!   name, and (b) every occurrence of the prefix in the answer is a whole sentinel, so the
//!   engine's own code only copied it. The engine's code compares names for equality and orders
//!   them; every generated name, and the sentinel, compares the same way with any string that
//!   does not start with the prefix, and no other string in the pod or the answer does.
//! - A replica's answer is the sentinel answer with the sentinel renamed to its token name. The
//!   first review gets it too; a shape that fails (a) or (b), or is not injected, is marked and
//!   answered in full from then on.
//!
//! Debug builds (every test and the fuzz targets) also compute every renamed answer in full and
//! compare. A repeated review is one more replica: nothing is learnt from it.
//!
//! The server looks a review up from its head (`admission::Head`: the uid and where it lies, the
//! token volume's name, what it logs) before it reads the pod, so a replayed answer never builds
//! the pod as a value; a review without a remembered answer is read whole and goes to
//! [`ReplicaMemo::decide`].
//!
//! Bounded: [`CAPACITY`] shapes and [`MAX_BYTES`] bytes, most recently used first. A new config
//! snapshot starts afresh.

use std::hash::{DefaultHasher, Hasher};
use std::ops::Range;
use std::sync::{Arc, Mutex, Weak};

use memchr::memmem;
use prometheus_client::metrics::counter::Counter;
use serde_json::Value;

use crate::admission::{AdmitError, Decision, Head, Review, Traced};
use crate::config::Config;

/// Shapes remembered at most.
pub const CAPACITY: usize = 64;
/// Bytes held at most (shapes and answers); an answer that alone would take a quarter of it is
/// not remembered.
pub const MAX_BYTES: usize = 2 << 20;
/// The prefix of the token volume the API server's ServiceAccount admission adds.
pub const TOKEN_VOLUME_PREFIX: &str = "kube-api-access-";
/// The characters of the token volume's suffix: `k8s.io/apimachinery/pkg/util/rand`'s alphabet
/// (no vowels, no `0`, `1`, `3`), five of them.
pub const TOKEN_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
const TOKEN_SUFFIX_LEN: usize = 5;
/// The token name the first review of a shape is injected with: the prefix and five characters
/// outside [`TOKEN_ALPHABET`], so the API server never generates it and no accepted body holds it.
pub const SENTINEL: &str = "kube-api-access-aeiou";

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
    /// The sentinel answer (for a shape with a token volume; else the answer itself), or `None`
    /// for a shape that is answered in full.
    answer: Option<Arc<Answer>>,
}

impl Entry {
    fn size(&self) -> usize {
        self.shape.len() + self.answer.as_ref().map_or(0, |a| a.size())
    }
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

    /// Whether every occurrence of the token prefix is a whole [`SENTINEL`]: the engine's code
    /// copied the name and did not cut, extend or make one up.
    fn holds_only_whole_sentinels(&self) -> bool {
        let whole = |text: &[u8]| {
            memmem::find_iter(text, TOKEN_VOLUME_PREFIX.as_bytes()).all(|at| {
                let rest = &text[at..];
                rest.starts_with(SENTINEL.as_bytes())
                    && !rest
                        .get(SENTINEL.len())
                        .is_some_and(|b| b.is_ascii_alphanumeric() || *b == b'-')
            })
        };
        whole(&self.patch) && self.warnings.iter().all(|w| whole(w.as_bytes()))
    }

    /// This answer for the review with token volume `token`: the sentinel renamed.
    fn for_token(&self, token: Option<&str>) -> Answer {
        let Some(token) = token else {
            return self.clone();
        };
        Answer {
            patch: replace(&self.patch, SENTINEL.as_bytes(), token.as_bytes()),
            warnings: self
                .warnings
                .iter()
                .map(|w| w.replace(SENTINEL, token))
                .collect(),
            findings: self.findings.clone(),
        }
    }
}

/// What a lookup found for a review.
enum Found {
    /// A remembered answer: give it for this review's token.
    Replay(Arc<Answer>),
    /// A shape answered in full.
    Refused,
    Nothing,
}

/// What a review is looked up by: its shape, the native-sidecar mode it is answered in, and its
/// token volume's name.
#[derive(Debug, Clone)]
pub struct Key {
    token: Option<String>,
    /// How many times the token name occurs in the body.
    occurrences: usize,
    shape: Box<[u8]>,
    hash: u64,
    native: bool,
}

impl Key {
    /// The key of the review whose request body is `body` and whose head is `head`; `None` when
    /// its names are not in the form the module comment describes, which leaves the review to
    /// the engine.
    pub fn new(body: &[u8], head: &Head, native: bool) -> Option<Key> {
        let uid_span = head.uid_span.clone()?;
        if !is_uuid(&head.uid) {
            return None;
        }
        let token = head.token_volume.as_deref();
        if token.is_some_and(|t| !is_token_name(t)) {
            return None;
        }
        let (shape, occurrences) = shape_of(body, uid_span, token)?;
        Some(Key {
            hash: hash_of(&shape),
            token: token.map(str::to_owned),
            occurrences,
            shape,
            native,
        })
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

    /// The answer to the review with this key, when a review of its shape was answered with
    /// this config and the shape can be replayed. With debug assertions, `full()` answers it in
    /// full to compare.
    pub fn replay(
        &self,
        config: &Arc<Config>,
        key: &Key,
        full: impl FnOnce() -> Result<Decision, AdmitError>,
    ) -> Option<Decision> {
        let Found::Replay(answer) = self.find(config, key) else {
            return None;
        };
        let replayed = self.rename_checked(&answer, key, full);
        self.replayed.inc();
        Some(replayed)
    }

    /// `answer` for `key`'s token; with debug assertions, compared with `full()`.
    fn rename_checked(
        &self,
        answer: &Answer,
        key: &Key,
        full: impl FnOnce() -> Result<Decision, AdmitError>,
    ) -> Decision {
        let renamed = answer.for_token(key.token.as_deref()).into_decision();
        if cfg!(debug_assertions) {
            assert_eq!(
                full().as_ref().ok().and_then(Answer::of),
                Answer::of(&renamed),
                "a replayed replica answer differs from the full answer"
            );
        }
        renamed
    }

    /// The answer to a decoded review with this key (`None`: not one to remember), `run` being
    /// the engine: replayed for a remembered shape; else, for a new shape, the sentinel review
    /// is injected and, when it qualifies (see the module comment), remembered and given renamed;
    /// otherwise `run(review)`.
    pub fn decide(
        &self,
        config: &Arc<Config>,
        key: Option<Key>,
        review: &Review,
        run: impl Fn(&Review) -> Result<Traced, AdmitError>,
    ) -> Result<Decision, AdmitError> {
        let full = || run(review).map(|traced| traced.decision);
        let Some(key) = key else {
            return full();
        };
        match self.find(config, &key) {
            Found::Replay(answer) => {
                let replayed = self.rename_checked(&answer, &key, full);
                self.replayed.inc();
                Ok(replayed)
            }
            Found::Refused => full(),
            Found::Nothing => {
                let Some(token) = key.token.as_deref() else {
                    // No name to rename: the same shape is the same review but for its uid.
                    let decision = full()?;
                    if let Some(answer) = Answer::of(&decision) {
                        self.remember(config, key, Some(answer));
                    }
                    return Ok(decision);
                };
                let answer = sentinel_review(review, token, key.occurrences)
                    .and_then(|sentinel| run(&sentinel).ok())
                    .and_then(|traced| qualifies(&traced));
                let Some(answer) = answer else {
                    self.remember(config, key, None);
                    return full();
                };
                let decision = self.rename_checked(&answer, &key, full);
                self.remember(config, key, Some(answer));
                Ok(decision)
            }
        }
    }

    /// The answer to a request body as the server finds it (`server::webhook`, which also logs
    /// from the head): the head, a replay for a remembered shape, else the review read whole
    /// and [`ReplicaMemo::decide`]. `None` when the body is not a review. For tests, fuzzing and
    /// benchmarks.
    pub fn answer(
        &self,
        config: &Arc<Config>,
        body: &[u8],
        native: bool,
    ) -> Option<Result<Decision, AdmitError>> {
        let key = Head::from_slice(body).and_then(|head| Key::new(body, &head, native));
        let full = || {
            let review = Review::from_slice(body).map_err(|e| AdmitError::Panic(e.to_string()))?;
            crate::admission::decide(config, &review, native)
        };
        if let Some(replayed) = key.as_ref().and_then(|key| self.replay(config, key, full)) {
            return Some(Ok(replayed));
        }
        let review = Review::from_slice(body).ok()?;
        Some(self.decide(config, key, &review, |r| {
            crate::admission::decide_traced(config, r, native)
        }))
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

    /// Shapes remembered with an answer to replay (the others are answered in full).
    pub fn replayable(&self) -> usize {
        self.lock()
            .entries
            .iter()
            .filter(|e| e.answer.is_some())
            .count()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock leaves only a cache behind; its entries are still
        // whole (every change is a single push or remove), so keep using it.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn find(&self, config: &Arc<Config>, key: &Key) -> Found {
        let mut state = self.lock();
        if !std::ptr::eq(state.config.as_ptr(), Arc::as_ptr(config)) {
            return Found::Nothing;
        }
        let Some(at) = state.entries.iter().position(|e| key.same_shape(e)) else {
            return Found::Nothing;
        };
        let entry = state.entries.remove(at);
        // Renamed by the caller, after the lock is released.
        let found = match &entry.answer {
            Some(answer) => Found::Replay(Arc::clone(answer)),
            None => Found::Refused,
        };
        state.entries.insert(0, entry);
        found
    }

    fn remember(&self, config: &Arc<Config>, key: Key, answer: Option<Answer>) {
        let entry = Entry {
            hash: key.hash,
            native: key.native,
            shape: key.shape,
            answer: answer.map(Arc::new),
        };
        let size = entry.size();
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
        if state
            .entries
            .iter()
            .any(|e| e.hash == entry.hash && e.native == entry.native && e.shape == entry.shape)
        {
            return;
        }
        while state.entries.len() >= CAPACITY || state.bytes + size > MAX_BYTES {
            let Some(old) = state.entries.pop() else {
                break;
            };
            state.bytes -= old.size();
        }
        state.bytes += size;
        state.entries.insert(0, entry);
    }
}

/// The sentinel's answer, when it can stand for every replica's (see the module comment).
fn qualifies(traced: &Traced) -> Option<Answer> {
    let answer = Answer::of(&traced.decision)?;
    let qualifies = !traced.templates_touched_token && answer.holds_only_whole_sentinels();
    if !qualifies {
        tracing::warn!(
            "a template or the injection reads into, writes or reshapes the service-account token volume's name (`kube-api-access-...`); pods of this shape are injected in full"
        );
    }
    qualifies.then_some(answer)
}

/// `review` with its token volume's name, which occurs `occurrences` times in the body, replaced
/// by [`SENTINEL`]; `None` when the decoded pod holds it another number of times.
fn sentinel_review(review: &Review, token: &str, occurrences: usize) -> Option<Review> {
    fn rename(value: &mut Value, token: &str, count: &mut usize) {
        match value {
            Value::String(s) if s == token => {
                SENTINEL.clone_into(s);
                *count += 1;
            }
            Value::Array(items) => items.iter_mut().for_each(|v| rename(v, token, count)),
            Value::Object(map) => map.values_mut().for_each(|v| rename(v, token, count)),
            _ => {}
        }
    }
    let mut sentinel = review.clone();
    let mut count = 0;
    rename(sentinel.object.as_mut()?, token, &mut count);
    (count == occurrences).then_some(sentinel)
}

/// A UUID as the API server writes one: 8-4-4-4-12 lowercase hexadecimal digits.
fn is_uuid(uid: &str) -> bool {
    let bytes = uid.as_bytes();
    bytes.len() == 36
        && bytes.iter().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => *b == b'-',
            _ => b.is_ascii_digit() || (b'a'..=b'f').contains(b),
        })
}

/// `kube-api-access-` and five characters of [`TOKEN_ALPHABET`].
pub fn is_token_name(name: &str) -> bool {
    name.strip_prefix(TOKEN_VOLUME_PREFIX)
        .is_some_and(|suffix| {
            suffix.len() == TOKEN_SUFFIX_LEN && suffix.bytes().all(|b| TOKEN_ALPHABET.contains(&b))
        })
}

/// The body with the uid at `uid_span` replaced by `NUL 0` and each occurrence of the token
/// name by `NUL 1`, and how many occurrences there were. `None` when the body holds a NUL (which
/// would make two shapes alike that are not), a `\u` escape of a letter, digit or `-`, or the
/// token prefix anywhere but as the token name, written whole as the value of a `"name"` key.
fn shape_of(
    body: &[u8],
    uid_span: Range<usize>,
    token: Option<&str>,
) -> Option<(Box<[u8]>, usize)> {
    if body.contains(&0) || escapes_a_name_character(body) {
        return None;
    }
    let prefix = TOKEN_VOLUME_PREFIX.as_bytes();
    let mut cuts = Vec::new();
    for at in memmem::find_iter(body, prefix) {
        let token = token?.as_bytes();
        let whole = body[at..].starts_with(token)
            && body.get(at + token.len()) == Some(&b'"')
            && is_name_value(&body[..at]);
        if !whole {
            return None;
        }
        cuts.push((at..at + token.len(), 1u8));
    }
    let occurrences = cuts.len();
    if token.is_some() && occurrences == 0 {
        return None;
    }
    // The uid is a UUID, which cannot hold the prefix: the spans do not overlap.
    cuts.push((uid_span, 0));
    cuts.sort_by_key(|(span, _)| span.start);
    let mut shape = Vec::with_capacity(body.len());
    let mut rest = 0;
    for (span, marker) in cuts {
        shape.extend_from_slice(body.get(rest..span.start)?);
        shape.extend_from_slice(&[0, marker]);
        rest = span.end;
    }
    shape.extend_from_slice(body.get(rest..)?);
    Some((shape.into_boxed_slice(), occurrences))
}

/// Whether `before` ends in `{` or `,`, then `"name"`, `:` and the opening quote of a string,
/// with JSON whitespace between. In a valid JSON text that quote opens the value of a `name`
/// key: inside a string, a quote after `:` or whitespace would have ended it, and a bare word
/// after a closing quote is not JSON.
fn is_name_value(before: &[u8]) -> bool {
    fn trim(mut s: &[u8]) -> &[u8] {
        while let [rest @ .., b' ' | b'\t' | b'\n' | b'\r'] = s {
            s = rest;
        }
        s
    }
    let Some(before) = before.strip_suffix(b"\"") else {
        return false;
    };
    let Some(before) = trim(before).strip_suffix(b":") else {
        return false;
    };
    let Some(before) = trim(before).strip_suffix(b"\"name\"") else {
        return false;
    };
    matches!(trim(before).last(), Some(b'{' | b','))
}

/// Whether the body has a `\u` escape that stands for a letter, a digit or `-` (the characters
/// of the token prefix and alphabet): with none, every string holding the prefix shows it in
/// the text.
fn escapes_a_name_character(body: &[u8]) -> bool {
    memmem::find_iter(body, b"\\u").any(|at| {
        let Some(hex) = body.get(at + 2..at + 6) else {
            return false;
        };
        let code = std::str::from_utf8(hex)
            .ok()
            .and_then(|h| u32::from_str_radix(h, 16).ok());
        code.and_then(char::from_u32)
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '-')
    })
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

    /// The answer through the memo, as the server gets it: the head first, then the review.
    fn answer(memo: &ReplicaMemo, config: &Arc<Config>, body: &[u8]) -> (Vec<u8>, Vec<String>) {
        match memo.answer(config, body, false) {
            Some(Ok(Decision::Patch {
                patch, warnings, ..
            })) => (patch, warnings),
            other => panic!("{other:?}"),
        }
    }

    fn replayable(memo: &ReplicaMemo) -> Vec<bool> {
        memo.lock()
            .entries
            .iter()
            .map(|e| e.answer.is_some())
            .collect()
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
    fn replicas_get_the_sentinel_answer_under_their_own_names() {
        let config = Arc::new(Config::embedded());
        let memo = ReplicaMemo::default();
        let mut answers = Vec::new();
        for (uid, token) in UIDS.iter().zip(TOKENS) {
            answers.push(answer(&memo, &config, &body(uid, token, "web")));
            assert_eq!(replayable(&memo), vec![true]);
        }
        // The first from the sentinel's answer, the others replayed (debug builds compared each
        // with a full answer).
        assert_eq!(memo.replayed(), 2);
        // The user's istio-proxy is saved with its mounts, so the token name is in the patch;
        // each replica's answer names its own token and no other, nor the sentinel.
        for (i, (patch, _)) in answers.iter().enumerate() {
            let text = String::from_utf8_lossy(patch);
            assert!(!text.contains(SENTINEL));
            for (j, token) in TOKENS.iter().enumerate() {
                assert_eq!(text.contains(token), i == j, "answer {i}, token {j}");
            }
        }
        // The same review again is one more replica; another workload is another shape.
        answer(&memo, &config, &body(UIDS[0], TOKENS[0], "web"));
        assert_eq!(memo.replayed(), 3);
        answer(&memo, &config, &body(UIDS[0], TOKENS[0], "api"));
        assert_eq!(memo.len(), 2);
    }

    fn with_template(reading: &str) -> Arc<Config> {
        let mut sources = Sources::embedded();
        sources.config = format!(
            "templates:\n  t: |\n    metadata:\n      annotations:\n        read: {{{{ ({reading}) | string }}}}\n    spec:\n      containers:\n      - name: istio-proxy\n        image: proxy\ndefaultTemplates: [t]\npolicy: enabled\n"
        );
        Arc::new(Config::from_sources(&sources).unwrap())
    }

    /// Whatever a template does with the name, every answer is its own full answer: a template
    /// that reads it at all is never replayed.
    #[test]
    fn a_template_that_reads_the_name_is_answered_in_full() {
        for reading in [
            "spec.volumes[0].name[-5:]",
            "spec.volumes[0].name[-1:] == 'p'",
            "spec.volumes[0].name | length",
            "spec.volumes | map(attribute='name') | sort | first",
        ] {
            let config = with_template(reading);
            let memo = ReplicaMemo::default();
            for (uid, token) in UIDS.iter().zip(TOKENS) {
                answer(&memo, &config, &body(uid, token, "web"));
            }
            assert_eq!(replayable(&memo), vec![false], "{reading}");
            assert_eq!(memo.replayed(), 0, "{reading}");
        }
        // A template that reads other fields is replayed.
        let config = with_template("spec.containers[0].name");
        let memo = ReplicaMemo::default();
        for (uid, token) in UIDS.iter().zip(TOKENS) {
            answer(&memo, &config, &body(uid, token, "web"));
        }
        assert_eq!(memo.replayed(), 2);
    }

    #[test]
    fn a_new_config_starts_afresh_and_names_not_of_the_api_server_are_not_remembered() {
        let memo = ReplicaMemo::default();
        let first = Arc::new(Config::embedded());
        answer(&memo, &first, &body(UIDS[0], TOKENS[0], "web"));
        assert_eq!(memo.len(), 1);
        let second = Arc::new(Config::embedded());
        answer(&memo, &second, &body(UIDS[1], TOKENS[1], "web"));
        assert_eq!(memo.len(), 1);
        for body in [
            body("istio-proxy", TOKENS[0], "x"),
            body("12345678", TOKENS[0], "x"),
            body(&UIDS[2].to_uppercase(), TOKENS[0], "x"),
            body(UIDS[2], "kube-api-access-aeiou", "y"),
            body(UIDS[2], "kube-api-access-x7k2", "y"),
            body(UIDS[2], "kube-api-access-x7k2pp", "y"),
            body(UIDS[2], "kube-api-access-a/b~c", "y"),
            // Another string with the prefix, or the name as a label.
            body(UIDS[2], TOKENS[0], "kube-api-access-zzzzz"),
            body(UIDS[2], TOKENS[0], TOKENS[0]),
        ] {
            answer(&memo, &second, &body);
        }
        assert_eq!(memo.len(), 1);
    }

    #[test]
    fn shapes_mask_the_uid_where_it_is_and_the_name_where_it_is_a_name() {
        let token = Some(TOKENS[0]);
        let text = br#"{"uid":"U","a":[{"name":"kube-api-access-x7k2p"},{ "name" : "kube-api-access-x7k2p"}]}"#;
        let (shape, n) = shape_of(text, 8..9, token).unwrap();
        assert_eq!(n, 2);
        assert_eq!(
            &*shape,
            b"{\"uid\":\"\0\0\",\"a\":[{\"name\":\"\0\x01\"},{ \"name\" : \"\0\x01\"}]}"
        );
        for text in [
            // The name as another field's value, as a key, inside a longer string.
            &br#"{"uid":"U","image":"kube-api-access-x7k2p"}"#[..],
            br#"{"uid":"U","a":{"kube-api-access-x7k2p":"x"}}"#,
            br#"{"uid":"U","name":"x kube-api-access-x7k2p"}"#,
            br#"{"uid":"U","name":"kube-api-access-x7k2pq"}"#,
            br#"{"uid":"U","xname":"kube-api-access-x7k2p"}"#,
            // Another name with the prefix; an escape that spells one; a NUL.
            br#"{"uid":"U","name":"kube-api-access-x7k2p","n":"kube-api-access-"}"#,
            br#"{"uid":"U","name":"kube-api-access-x7k2p","n":"kube\u002dapi"}"#,
            b"{\"uid\":\"U\",\"name\":\"kube-api-access-x7k2p\",\"n\":\"\0\"}",
        ] {
            assert!(
                shape_of(text, 8..9, token).is_none(),
                "{}",
                String::from_utf8_lossy(text)
            );
        }
        // Escapes of other characters are fine; no token, no prefix.
        assert!(shape_of(br#"{"uid":"U","n":"\u0026"}"#, 8..9, None).is_some());
        assert!(shape_of(br#"{"uid":"U","name":"kube-api-access-x7k2p"}"#, 8..9, None).is_none());
        assert!(is_uuid(UIDS[0]) && !is_uuid("705ab4f5-6393-11e8-b7cc-42010a80000g"));
        assert!(is_token_name(TOKENS[2]) && !is_token_name(SENTINEL));
        assert_eq!(replace(b"a.b.a", b"a", b"zz"), b"zz.b.zz");
    }
}
