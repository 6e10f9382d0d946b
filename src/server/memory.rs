//! The most memory the server can take with given settings: the arithmetic of docs/server.md
//! (section Memory), kept next to the limits it is made of so the two cannot drift apart. The
//! server logs it at start-up; the chart's memory limit is checked against it.

use super::Settings;
use super::connections::{H1_MAX_BUF, H2_MAX_HEADER_LIST, H2_MAX_STREAMS, H2_WINDOW};

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;

/// The process with its config loaded, its runtime and certificate, after a first review:
/// 28 MiB measured (release build, `VmRSS`), with room for the allocator's own pages.
pub const BASELINE: u64 = 32 * MIB;

/// TLS buffers of one connection (rustls: a received record of up to 16 KiB plus its overhead,
/// up to 16 KiB of decrypted bytes not yet read, and the records being sent) and the
/// connection's own state, rounded up.
pub const TLS_AND_STATE: u64 = 64 * KIB;

/// What one connection can hold besides the bodies counted in the budget: on HTTP/1.1 its
/// read buffer, on h2 the flow-control window and the request heads of its open streams.
pub const fn per_connection() -> u64 {
    let h1 = H1_MAX_BUF as u64;
    let h2 = H2_WINDOW as u64 + H2_MAX_STREAMS as u64 * H2_MAX_HEADER_LIST as u64;
    TLS_AND_STATE + if h1 > h2 { h1 } else { h2 }
}

/// The engine's working memory per byte of the body it reviews: the parsed review, the
/// rendered sidecar, the patch and the answer. Measured at 20 bytes per byte with a 6 MiB pod
/// of 4,000 containers (docs/server.md), rounded up. A body's bytes stay in the budget until
/// its review is answered, so the budget bounds this too.
pub const ENGINE_PER_BODY_BYTE: u64 = 24;

/// The engine's working memory for a review, whatever its size (template rendering state and
/// the like), for each review it runs at once.
pub const ENGINE_PER_REVIEW: u64 = MIB;

/// The bound for `settings`, with the engine running `engines` reviews at once.
pub fn worst_case(settings: &Settings, engines: usize) -> u64 {
    let connections = (settings.max_connections + settings.admin_max_connections) as u64;
    BASELINE
        + settings.body_budget_bytes as u64 * (1 + ENGINE_PER_BODY_BYTE)
        + connections * per_connection()
        + engines as u64 * ENGINE_PER_REVIEW
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_holds_at_most_an_h2_window_and_its_stream_heads() {
        assert_eq!(per_connection(), 64 * KIB + 64 * KIB + 16 * 8 * KIB);
    }
}
