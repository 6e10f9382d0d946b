//! Configuration errors: each names the key, the line when known, and what is accepted.

/// Why a configuration was rejected.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// A key holds invalid content.
    #[error("invalid `{key}`{}: {message}", line.map(|l| format!(" at line {l}")).unwrap_or_default())]
    Invalid {
        /// `config`, `values` or `mesh` (or a template name inside `config`).
        key: String,
        line: Option<usize>,
        message: String,
    },
}
