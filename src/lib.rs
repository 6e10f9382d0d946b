//! sidecar-injector: a Kubernetes mutating admission webhook that injects the Istio sidecar.
//!
//! Data flows one way: `server` -> `admission` -> `inject`. The `inject` module is the pure
//! engine: no I/O, no clock, deterministic. `config` holds the ConfigMap model it runs on.
#![forbid(unsafe_code)]

pub mod admission;
pub mod analyze;
pub mod certs;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod inject;
pub mod manifest;
pub mod metrics;
pub mod replicas;
pub mod server;
pub mod upgrade;
pub mod value;
pub mod yaml;
