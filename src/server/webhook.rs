//! The `/inject` endpoint: HTTP checks, then admission, then the answer.

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde_json::Value;
use tracing::{Instrument, error, field, info, info_span, warn};

use super::state::Shared;
use crate::admission::{self, AdmitError, Review};
use crate::metrics::RejectLabels;

/// The webhook routes. `/inject/` is accepted too because Istio's webhook configurations use both.
pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/inject", post(inject))
        .route("/inject/", post(inject))
        .with_state(shared)
}

async fn inject(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Body) -> Response {
    let started = Instant::now();
    let response = answer(&shared, &headers, body).await;
    shared
        .metrics
        .review_seconds
        .observe(started.elapsed().as_secs_f64());
    response
}

async fn answer(shared: &Shared, headers: &HeaderMap, body: Body) -> Response {
    if !is_json(headers) {
        let found = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("none");
        let message = format!("Content-Type must be application/json, found {found:?}");
        return reject(shared, StatusCode::UNSUPPORTED_MEDIA_TYPE, &message, None);
    }
    let body = match read_body(shared, headers, body).await {
        Ok(body) => body,
        Err((code, message)) => return reject(shared, code, &message, None),
    };
    let review = match Review::from_slice(&body) {
        Ok(review) => review,
        Err(err) => return reject(shared, StatusCode::BAD_REQUEST, &err.to_string(), None),
    };
    drop(body);
    let span = info_span!(
        "review",
        uid = %review.uid,
        namespace = review.namespace.as_deref().unwrap_or_default(),
        pod = %review.display_name(),
        dry_run = review.dry_run,
        outcome = field::Empty,
        reason = field::Empty,
    );
    async {
        let config = shared.config.load_full();
        let native = shared.native_sidecars(&config);
        match admission::decide(&config, &review, native) {
            Ok(decision) => {
                let (outcome, reason) = (decision.outcome(), decision.reason());
                let span = tracing::Span::current();
                span.record("outcome", outcome);
                span.record("reason", reason);
                shared.metrics.review(outcome, reason);
                info!("answered");
                axum::Json(admission::response(&review, &decision)).into_response()
            }
            Err(err) => {
                let reason = match err {
                    AdmitError::Inject(_) => "inject_failed",
                    AdmitError::Panic(_) => "panic",
                };
                error!(error = %err, "injection failed");
                shared.metrics.review("error", reason);
                status_response(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    &err.to_string(),
                    Some(&review.uid),
                )
            }
        }
    }
    .instrument(span)
    .await
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

/// Reads the whole body within the size and time limits.
async fn read_body(
    shared: &Shared,
    headers: &HeaderMap,
    body: Body,
) -> Result<Bytes, (StatusCode, String)> {
    let limit = shared.limits.max_body_bytes;
    let too_large = || {
        (
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body is larger than the limit of {limit} bytes"),
        )
    };
    // Refuse early when the client announces a size over the limit.
    let announced = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let collect = Limited::new(body, limit).collect();
    match tokio::time::timeout(shared.limits.read_timeout, collect).await {
        Err(_) => Err((
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "the body was not received within {:?}",
                shared.limits.read_timeout
            ),
        )),
        Ok(Err(err)) if err.downcast_ref::<LengthLimitError>().is_some() => Err(too_large()),
        Ok(Err(err)) => Err((
            StatusCode::BAD_REQUEST,
            format!("the body could not be read: {err}"),
        )),
        Ok(Ok(collected)) => {
            let bytes = collected.to_bytes();
            if bytes.is_empty() {
                return Err((StatusCode::BAD_REQUEST, "the body is empty".to_owned()));
            }
            Ok(bytes)
        }
    }
}

fn reject(shared: &Shared, code: StatusCode, message: &str, uid: Option<&str>) -> Response {
    warn!(code = code.as_u16(), message, "request refused");
    shared
        .metrics
        .rejected
        .get_or_create(&RejectLabels {
            code: code.as_u16(),
        })
        .inc();
    status_response(code, message, uid)
}

fn status_response(code: StatusCode, message: &str, uid: Option<&str>) -> Response {
    let reason = match code {
        StatusCode::BAD_REQUEST => "BadRequest",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "UnsupportedMediaType",
        StatusCode::PAYLOAD_TOO_LARGE => "RequestEntityTooLarge",
        StatusCode::REQUEST_TIMEOUT => "Timeout",
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
