//! Reading a request body: within the per-request size limit, the time limit, and the budget of
//! body bytes held at once across all requests.
//!
//! The budget is what bounds the memory of bodies by construction: a body's bytes are reserved
//! before they are stored (the announced `Content-Length` up front, else each growth of the
//! buffer as chunks arrive) and given back when the request is done with its body. A body that
//! does not fit is refused at once with 503 rather than waiting, so a flood of large bodies
//! cannot queue up either.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, StatusCode, header};
use http_body_util::BodyExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::state::Limits;

/// The bytes of bodies held at once, across all requests.
#[derive(Debug)]
pub struct BodyBudget {
    bytes: Arc<Semaphore>,
    total: usize,
}

/// Budget bytes held by one body; given back when dropped.
#[derive(Debug, Default)]
pub struct Held {
    permit: Option<OwnedSemaphorePermit>,
}

impl Held {
    /// The bytes held.
    pub fn bytes(&self) -> usize {
        self.permit
            .as_ref()
            .map_or(0, OwnedSemaphorePermit::num_permits)
    }
}

impl BodyBudget {
    pub fn new(total: usize) -> BodyBudget {
        let total = total.clamp(1, Semaphore::MAX_PERMITS);
        BodyBudget {
            bytes: Arc::new(Semaphore::new(total)),
            total,
        }
    }

    /// The whole budget, in bytes.
    pub fn total(&self) -> usize {
        self.total
    }

    /// Bytes not held by any body now.
    pub fn available(&self) -> usize {
        self.bytes.available_permits()
    }

    /// Grows `held` to `bytes`; `false` (and `held` unchanged) when the budget cannot give
    /// that much now.
    fn hold(&self, held: &mut Held, bytes: usize) -> bool {
        let Some(more) = bytes.checked_sub(held.bytes()).filter(|more| *more > 0) else {
            return true;
        };
        let Ok(more) = u32::try_from(more) else {
            return false;
        };
        match self.bytes.clone().try_acquire_many_owned(more) {
            Ok(permit) => {
                match &mut held.permit {
                    Some(held) => held.merge(permit),
                    None => held.permit = Some(permit),
                }
                true
            }
            Err(_) => false,
        }
    }
}

/// Why a body was not taken, with the HTTP status it is answered with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// 413: over the per-request limit (announced or as it arrived).
    TooLarge { limit: usize },
    /// 503: the bodies being read or held by other requests leave no room for this one.
    BudgetFull { wanted: usize, budget: usize },
    /// 408: not received within the read timeout.
    Timeout(Duration),
    /// 400: the stream broke, or there was no body.
    Unreadable(String),
}

impl Refusal {
    pub fn status(&self) -> StatusCode {
        match self {
            Refusal::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Refusal::BudgetFull { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Refusal::Timeout(_) => StatusCode::REQUEST_TIMEOUT,
            Refusal::Unreadable(_) => StatusCode::BAD_REQUEST,
        }
    }

    pub fn message(&self) -> String {
        match self {
            Refusal::TooLarge { limit } => {
                format!("the body is larger than the limit of {limit} bytes")
            }
            Refusal::BudgetFull { wanted, budget } => format!(
                "the server is reading other request bodies: {wanted} more bytes do not fit in \
                 its budget of {budget} bytes for bodies in flight; retry shortly"
            ),
            Refusal::Timeout(timeout) => format!("the body was not received within {timeout:?}"),
            Refusal::Unreadable(message) => message.clone(),
        }
    }
}

/// Reads the whole body within the limits and the budget; the bytes stay reserved in the
/// budget while the returned [`Held`] lives.
///
/// A body refused before it was read whole is drained first (read and thrown away, up to the
/// size limit more than was read, so bodies up to twice the limit, within the read timeout): a client still sending then finishes its request
/// and reads the answer, where otherwise the stream would be reset under it (h2) or the
/// connection closed (HTTP/1.1) while it writes.
pub async fn read(
    limits: &Limits,
    budget: &BodyBudget,
    headers: &HeaderMap,
    mut body: Body,
) -> Result<(Bytes, Held), Refusal> {
    let limit = limits.max_body_bytes;
    let announced = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let mut held = Held::default();
    let mut buf = Vec::new();
    let refused = match announced {
        // Refuse early when the client announces a size over the limit.
        Some(n) if n > limit as u64 => Some(Refusal::TooLarge { limit }),
        Some(n) => {
            // At most the limit, so it fits in usize.
            let n = usize::try_from(n).unwrap_or(limit);
            if budget.hold(&mut held, n) {
                buf.reserve_exact(n);
                None
            } else {
                Some(Refusal::BudgetFull {
                    wanted: n,
                    budget: budget.total(),
                })
            }
        }
        None => None,
    };
    if let Some(refused) = refused {
        // Nothing was read yet: a body up to twice the limit is read to its end.
        drain(body, limit.saturating_mul(2), limits.read_timeout).await;
        return Err(refused);
    }

    let reading = async {
        while let Some(frame) = body.frame().await {
            let frame = frame
                .map_err(|err| Refusal::Unreadable(format!("the body could not be read: {err}")))?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            let len = buf.len() + data.len();
            if len > limit {
                return Err(Refusal::TooLarge { limit });
            }
            if len > buf.capacity() {
                // Doubling, as a Vec does, but every byte of capacity reserved first.
                let capacity = len.max(buf.capacity() * 2).min(limit);
                if !budget.hold(&mut held, capacity) {
                    return Err(Refusal::BudgetFull {
                        wanted: capacity - held.bytes(),
                        budget: budget.total(),
                    });
                }
                buf.reserve_exact(capacity - buf.len());
            }
            buf.extend_from_slice(&data);
        }
        Ok(())
    };
    let read = match tokio::time::timeout(limits.read_timeout, reading).await {
        Ok(read) => read,
        Err(_) => Err(Refusal::Timeout(limits.read_timeout)),
    };
    if let Err(refused) = read {
        if matches!(
            refused,
            Refusal::TooLarge { .. } | Refusal::BudgetFull { .. }
        ) {
            // The bytes read so far go back to the budget before draining.
            drop(buf);
            drop(held);
            drain(body, limit, limits.read_timeout).await;
        }
        return Err(refused);
    }
    if buf.is_empty() {
        return Err(Refusal::Unreadable("the body is empty".to_owned()));
    }
    Ok((Bytes::from(buf), held))
}

/// Reads and drops the rest of `body`, up to `max` bytes and for at most `timeout`.
async fn drain(mut body: Body, max: usize, timeout: Duration) {
    let draining = async {
        let mut seen = 0usize;
        while let Some(Ok(frame)) = body.frame().await {
            if let Ok(data) = frame.into_data() {
                seen += data.len();
                if seen > max {
                    return;
                }
            }
        }
    };
    let _ = tokio::time::timeout(timeout, draining).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_is_held_and_given_back() {
        let budget = BodyBudget::new(100);
        let mut a = Held::default();
        assert!(budget.hold(&mut a, 60));
        assert!(budget.hold(&mut a, 80), "growing takes only the difference");
        assert_eq!(a.bytes(), 80);
        let mut b = Held::default();
        assert!(!budget.hold(&mut b, 30), "30 more do not fit next to 80");
        assert_eq!(b.bytes(), 0);
        assert!(budget.hold(&mut b, 20));
        assert_eq!(budget.available(), 0);
        drop(a);
        assert_eq!(budget.available(), 80);
        drop(b);
        assert_eq!(budget.available(), 100);
    }
}
