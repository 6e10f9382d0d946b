//! Istio's protocol selection for a Service port: `appProtocol` first, then the port name.
//!
//! Mirrors istio `pkg/config/kube/conversion.go` (`ConvertProtocol`): UDP and SCTP ports are
//! never proxied as TCP; a recognised `appProtocol` wins; otherwise a name `<protocol>` or
//! `<protocol>-<suffix>` (case-insensitive; `grpc-web` is checked before the split on the first
//! `-`) decides. Anything else falls back to protocol sniffing, which only recognises HTTP and
//! stalls server-first protocols (MySQL, many databases) until its timeout.

/// A protocol Istio recognises on a port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http,
    HttpProxy,
    Http2,
    Https,
    Grpc,
    GrpcWeb,
    Mongo,
    Mysql,
    Redis,
    Tcp,
    Tls,
    Udp,
}

/// How Envoy carries a protocol; two ports disagree when their classes differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// HTTP/1.1 on the wire (grpc-web is HTTP/1.1-compatible).
    Http1,
    /// HTTP/2 on the wire (h2c, gRPC).
    Http2,
    /// TLS passed through unparsed.
    Tls,
    /// Opaque TCP (databases are proxied as TCP by default).
    Tcp,
    Udp,
}

impl Protocol {
    /// The name accepted in a port name prefix or `appProtocol`.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Http => "http",
            Protocol::HttpProxy => "http_proxy",
            Protocol::Http2 => "http2",
            Protocol::Https => "https",
            Protocol::Grpc => "grpc",
            Protocol::GrpcWeb => "grpc-web",
            Protocol::Mongo => "mongo",
            Protocol::Mysql => "mysql",
            Protocol::Redis => "redis",
            Protocol::Tcp => "tcp",
            Protocol::Tls => "tls",
            Protocol::Udp => "udp",
        }
    }

    pub fn class(self) -> Class {
        match self {
            Protocol::Http | Protocol::HttpProxy | Protocol::GrpcWeb => Class::Http1,
            Protocol::Http2 | Protocol::Grpc => Class::Http2,
            Protocol::Https | Protocol::Tls => Class::Tls,
            Protocol::Mongo | Protocol::Mysql | Protocol::Redis | Protocol::Tcp => Class::Tcp,
            Protocol::Udp => Class::Udp,
        }
    }

    /// Parses a bare protocol name (istio `protocol.Parse`, plus the Kubernetes-standard
    /// `appProtocol` values Istio maps).
    pub fn parse(s: &str) -> Option<Protocol> {
        Some(match s.to_ascii_lowercase().as_str() {
            "http" | "kubernetes.io/ws" => Protocol::Http,
            "http_proxy" => Protocol::HttpProxy,
            "http2" | "kubernetes.io/h2c" => Protocol::Http2,
            "https" | "kubernetes.io/wss" => Protocol::Https,
            "grpc" => Protocol::Grpc,
            "grpc-web" => Protocol::GrpcWeb,
            "mongo" => Protocol::Mongo,
            "mysql" => Protocol::Mysql,
            "redis" => Protocol::Redis,
            "tcp" => Protocol::Tcp,
            "tls" => Protocol::Tls,
            "udp" => Protocol::Udp,
            _ => return None,
        })
    }

    /// The protocol a port name declares: `<protocol>` or `<protocol>-<suffix>`.
    pub fn from_port_name(name: &str) -> Option<Protocol> {
        let lower = name.to_ascii_lowercase();
        if lower == "grpc-web" || lower.starts_with("grpc-web-") {
            return Some(Protocol::GrpcWeb);
        }
        let prefix = lower.split('-').next().unwrap_or_default();
        Protocol::parse(prefix)
    }
}

/// Where a Service port's protocol came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Selected {
    /// The port is UDP or SCTP: Istio does not proxy it, so naming does not matter.
    NotProxied,
    AppProtocol(Protocol),
    Name(Protocol),
    /// Nothing declared a protocol: Istio sniffs.
    Sniffed,
}

/// Istio's decision for one Service port.
pub fn select(transport: Option<&str>, app_protocol: Option<&str>, name: Option<&str>) -> Selected {
    if matches!(transport, Some("UDP" | "SCTP")) {
        return Selected::NotProxied;
    }
    if let Some(p) = app_protocol.and_then(Protocol::parse) {
        return Selected::AppProtocol(p);
    }
    match name.and_then(Protocol::from_port_name) {
        Some(p) => Selected::Name(p),
        None => Selected::Sniffed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_istios_prefix_rule() {
        assert_eq!(Protocol::from_port_name("http"), Some(Protocol::Http));
        assert_eq!(Protocol::from_port_name("HTTP-web"), Some(Protocol::Http));
        assert_eq!(
            Protocol::from_port_name("grpc-web"),
            Some(Protocol::GrpcWeb)
        );
        assert_eq!(
            Protocol::from_port_name("grpc-web-ui"),
            Some(Protocol::GrpcWeb)
        );
        assert_eq!(Protocol::from_port_name("grpc-api"), Some(Protocol::Grpc));
        assert_eq!(Protocol::from_port_name("tcp-db"), Some(Protocol::Tcp));
        assert_eq!(
            Protocol::from_port_name("http_proxy"),
            Some(Protocol::HttpProxy)
        );
        assert_eq!(Protocol::from_port_name("web"), None);
        assert_eq!(Protocol::from_port_name("appport"), None);
        assert_eq!(Protocol::from_port_name("httpweb"), None);
        assert_eq!(Protocol::from_port_name("web-http"), None);
        assert_eq!(Protocol::from_port_name(""), None);
    }

    #[test]
    fn app_protocol_wins_and_udp_is_not_proxied() {
        assert_eq!(
            select(None, Some("kubernetes.io/h2c"), Some("web")),
            Selected::AppProtocol(Protocol::Http2)
        );
        assert_eq!(
            select(Some("TCP"), Some("custom"), Some("http")),
            Selected::Name(Protocol::Http)
        );
        assert_eq!(
            select(Some("TCP"), Some("custom"), Some("web")),
            Selected::Sniffed
        );
        assert_eq!(select(Some("UDP"), None, Some("dns")), Selected::NotProxied);
        assert_eq!(select(None, None, None), Selected::Sniffed);
    }
}
