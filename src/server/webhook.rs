//! The `/inject` endpoint: HTTP checks, then admission, then the answer.

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::Value;
use tracing::{Instrument, error, field, info, info_span, warn};

use super::body;
use super::engine_pool::PoolError;
use super::state::Shared;
use crate::admission::{self, AdmitError, ApiVersion, Decision, Head, Review, ReviewError};
use crate::config::Config;
use crate::replicas::Key;

/// The webhook routes. `/inject/` is accepted too because Istio's webhook configurations use both.
pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/inject", post(inject))
        .route("/inject/", post(inject))
        .with_state(shared)
}

/// How a request ended, for the span, the log line and the metrics.
struct Answered {
    response: Response,
    /// `injected`, `reinjected`, `skipped`, `denied`, `refused` (HTTP 4xx before the engine) or
    /// `error`.
    outcome: &'static str,
    /// The skip, denial, refusal or error reason, or what a re-injection did (`unchanged`,
    /// `updated`); empty for `injected`.
    reason: &'static str,
    /// Why a request was refused or failed, for the log.
    detail: Option<String>,
}

/// One span per request, its fields filled in as they become known, and one log line in it
/// when the answer is ready.
async fn inject(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Body) -> Response {
    let started = Instant::now();
    shared.metrics.requests.inc();
    let span = info_span!(
        "review",
        uid = field::Empty,
        namespace = field::Empty,
        pod = field::Empty,
        dry_run = field::Empty,
        outcome = field::Empty,
        reason = field::Empty,
        warnings = field::Empty,
        duration_us = field::Empty,
    );
    let answered = answer(&shared, &headers, body)
        .instrument(span.clone())
        .await;
    let elapsed = started.elapsed();
    shared.metrics.time_seconds.observe(elapsed.as_secs_f64());
    match answered.outcome {
        "injected" => {
            shared.metrics.success.inc();
        }
        "reinjected" => shared.metrics.reinjection(answered.reason),
        "skipped" => shared.metrics.skipped(answered.reason),
        _ => shared.metrics.failed(answered.reason),
    }
    span.record("outcome", answered.outcome);
    if !answered.reason.is_empty() {
        span.record("reason", answered.reason);
    }
    span.record(
        "duration_us",
        u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
    );
    span.in_scope(|| match (answered.outcome, &answered.detail) {
        ("error", detail) => error!(error = detail.as_deref(), "review failed"),
        ("refused", detail) => warn!(error = detail.as_deref(), "request refused"),
        _ => info!("review answered"),
    });
    answered.response
}

async fn answer(shared: &Arc<Shared>, headers: &HeaderMap, body: Body) -> Answered {
    if !is_json(headers) {
        let found = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("none");
        let message = format!("Content-Type must be application/json, found {found:?}");
        return refuse(StatusCode::UNSUPPORTED_MEDIA_TYPE, message);
    }
    let (body, held) = match body::read(&shared.limits, &shared.bodies, headers, body).await {
        Ok(read) => read,
        Err(refusal) => return refuse(refusal.status(), refusal.message()),
    };
    let config = shared.config.load_full();
    let (api_version, uid, decided) = match decide(shared, config, body, held).await {
        Ok(decided) => decided,
        Err(Undecided::NotAReview(err)) => {
            return refuse(StatusCode::BAD_REQUEST, err.to_string());
        }
        Err(Undecided::Engine(err, uid)) => return engine_error(&err, uid.as_deref()),
    };
    match decided {
        Ok(decision) => {
            if let Decision::Patch {
                warnings, findings, ..
            } = &decision
            {
                tracing::Span::current().record("warnings", warnings.len());
                for finding in findings {
                    shared.metrics.warned(finding);
                }
            }
            Answered {
                response: (
                    [(header::CONTENT_TYPE, "application/json")],
                    admission::response(api_version, &uid, &decision),
                )
                    .into_response(),
                outcome: decision.outcome(),
                reason: decision.reason(),
                detail: None,
            }
        }
        Err(err) => {
            let reason = match err {
                AdmitError::Inject(_) => "inject_failed",
                AdmitError::Panic(_) => "panic",
            };
            let message = err.to_string();
            Answered {
                response: status_response(StatusCode::INTERNAL_SERVER_ERROR, &message, Some(&uid)),
                outcome: "error",
                reason,
                detail: Some(message),
            }
        }
    }
}

/// A decision, with the `apiVersion` and uid to answer with.
type Decided = (ApiVersion, String, Result<Decision, AdmitError>);

/// Why a body got no decision.
enum Undecided {
    /// The body is not a review.
    NotAReview(ReviewError),
    /// The engine pool refused it or gave up on it; with the uid when the head read.
    Engine(PoolError, Option<String>),
}

/// The decision on a body. A pod CREATE whose replica was answered before is answered from the
/// memo, here, without reading the pod (see `replicas`); any other body goes to the engine pool,
/// is read whole there and goes to the engine. `held` is the body's share of the body budget:
/// it goes with the body, so a review past its deadline keeps it until the engine is done with
/// the body (the memory bound counts the engine's working memory against the budget).
async fn decide(
    shared: &Arc<Shared>,
    config: Arc<Config>,
    body: Bytes,
    held: body::Held,
) -> Result<Decided, Undecided> {
    let span = tracing::Span::current();
    let mut key = None;
    let mut uid = None;
    if let Some(head) = Head::from_slice(&body) {
        span.record("uid", head.uid.as_str());
        span.record("namespace", head.namespace.as_deref().unwrap_or_default());
        span.record("pod", head.display_name.as_str());
        span.record("dry_run", head.dry_run);
        let native = shared.native_sidecars(&config, head.node_name.as_deref());
        key = Key::new(&body, &head, native);
        let full = || match Review::from_slice(&body) {
            Ok(review) => admission::decide(&config, &review, native),
            Err(err) => panic!("a body whose head reads does not read as a review: {err}"),
        };
        if let Some(decision) = key
            .as_ref()
            .and_then(|key| shared.replicas.replay(&config, key, full))
        {
            return Ok((head.api_version, head.uid, Ok(decision)));
        }
        uid = Some(head.uid);
    }
    let recorded = uid.is_some();
    let work = {
        let shared = shared.clone();
        move || {
            let decided = span.in_scope(|| decide_in_full(&shared, &config, &body, key, recorded));
            drop(held);
            decided
        }
    };
    match shared.engine.run(work).await {
        Ok(decided) => decided.map_err(Undecided::NotAReview),
        Err(err) => Err(Undecided::Engine(err, uid)),
    }
}

/// The rest of [`decide`], on an engine thread: the body read whole, then the memo or the
/// engine. `key` is the head's, when it read (and `recorded` says the span has its fields).
fn decide_in_full(
    shared: &Shared,
    config: &Arc<Config>,
    body: &[u8],
    key: Option<Key>,
    recorded: bool,
) -> Result<Decided, ReviewError> {
    let span = tracing::Span::current();
    let review = Review::from_slice(body)?;
    // A body with a head has had these recorded from it (the same values).
    if !recorded {
        span.record("uid", review.uid.as_str());
        span.record("namespace", review.namespace.as_deref().unwrap_or_default());
        span.record("pod", review.display_name());
        span.record("dry_run", review.dry_run);
    }
    let node = review
        .object
        .as_ref()
        .and_then(|pod| pod.pointer("/spec/nodeName"))
        .and_then(Value::as_str)
        .filter(|node| !node.is_empty());
    let native = shared.native_sidecars(config, node);
    // The head's key when there was one (the same body, so the same names); a body without a
    // head is not remembered.
    let key = key.filter(|key| key.native() == native);
    let decided = shared.replicas.decide(config, key, &review, |review| {
        admission::decide_traced(config, review, native)
    });
    Ok((review.api_version, review.uid, decided))
}

/// The answer when the engine pool gave none: the API server's `failurePolicy` decides.
fn engine_error(err: &PoolError, uid: Option<&str>) -> Answered {
    let (code, reason) = match err {
        PoolError::Busy { .. } => (StatusCode::SERVICE_UNAVAILABLE, "engine_busy"),
        PoolError::Deadline(_) => (StatusCode::GATEWAY_TIMEOUT, "deadline"),
        PoolError::Failed(_) => (StatusCode::INTERNAL_SERVER_ERROR, "engine_failed"),
    };
    let message = err.to_string();
    Answered {
        response: status_response(code, &message, uid),
        outcome: "error",
        reason,
        detail: Some(message),
    }
}

/// `application/json`, with or without parameters such as `charset=utf-8`.
fn is_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let media = value.split(';').next().unwrap_or_default().trim();
    media.eq_ignore_ascii_case("application/json")
}

/// An HTTP refusal before the engine ran (the request is not a review we can answer).
fn refuse(code: StatusCode, message: String) -> Answered {
    let reason = match code {
        StatusCode::BAD_REQUEST => "bad_request",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::PAYLOAD_TOO_LARGE => "body_too_large",
        StatusCode::REQUEST_TIMEOUT => "body_timeout",
        StatusCode::SERVICE_UNAVAILABLE => "body_budget_full",
        _ => "refused",
    };
    let mut response = status_response(code, &message, None);
    if code == StatusCode::SERVICE_UNAVAILABLE {
        // The budget frees as other bodies are answered, in well under a second.
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
    }
    Answered {
        response,
        outcome: "refused",
        reason,
        detail: Some(message),
    }
}

fn status_response(code: StatusCode, message: &str, uid: Option<&str>) -> Response {
    let reason = match code {
        StatusCode::BAD_REQUEST => "BadRequest",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "UnsupportedMediaType",
        StatusCode::PAYLOAD_TOO_LARGE => "RequestEntityTooLarge",
        StatusCode::REQUEST_TIMEOUT | StatusCode::GATEWAY_TIMEOUT => "Timeout",
        StatusCode::SERVICE_UNAVAILABLE => "ServiceUnavailable",
        _ => "InternalError",
    };
    let body: Value = admission::status(code.as_u16(), reason, message, uid);
    (code, axum::Json(body)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn json_content_types() {
        let check = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::CONTENT_TYPE, HeaderValue::from_str(v).unwrap());
            is_json(&h)
        };
        assert!(check("application/json"));
        assert!(check("application/json; charset=utf-8"));
        assert!(check("Application/JSON"));
        assert!(!check("application/yaml"));
        assert!(!check("application/json-patch+json"));
        assert!(!is_json(&HeaderMap::new()));
    }
}
