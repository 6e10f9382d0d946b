//! The ConfigMap model: the keys `config`, `values` and `mesh`, loaded, validated and compiled
//! once per load. A [`Config`] is immutable; the server swaps whole snapshots on reload.

use std::path::Path;

mod error;

pub use error::ConfigError;

/// The raw text of the three ConfigMap keys.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// `config` (YAML): policy, templates, aliases, selectors, injectedAnnotations.
    pub config: String,
    /// `values` (JSON or YAML): Istio's Helm values.
    pub values: String,
    /// `mesh` (YAML): the MeshConfig subset.
    pub mesh: String,
}

/// One validated, compiled configuration snapshot.
#[derive(Debug)]
pub struct Config {}

impl Config {
    /// The default of all three keys compiled into the binary.
    pub fn embedded() -> Config {
        Config {}
    }

    /// Parses, validates and compiles the three keys.
    pub fn from_sources(sources: &Sources) -> Result<Config, ConfigError> {
        let _ = sources;
        Ok(Config {})
    }

    /// Loads a mounted ConfigMap directory holding the files `config`, `values` and `mesh`.
    pub fn load_dir(dir: &Path) -> Result<Config, ConfigError> {
        let _ = dir;
        Ok(Config {})
    }
}
