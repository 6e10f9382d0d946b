//! Hot reload of the injection config from a mounted ConfigMap directory.
//!
//! Polled by content for the same reason as the certificate (see `tls.rs`): a ConfigMap volume
//! is updated by a symlink swap that file watches miss.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::config::{Config, ConfigError};

/// The keys of the ConfigMap, one file each.
const KEYS: [&str; 3] = ["config", "values", "mesh"];

/// A mounted ConfigMap directory and the content last tried.
#[derive(Debug)]
pub struct ConfigDir {
    dir: PathBuf,
    /// What the last load attempt read, good or bad: a broken config is reported once, not on
    /// every poll, and tried again only when it changes.
    seen: Mutex<Vec<Option<Vec<u8>>>>,
}

/// What a reload found.
#[derive(Debug)]
pub enum ConfigReload {
    Unchanged,
    /// Already in the `Arc` the server swaps in.
    Changed(Arc<Config>),
}

impl ConfigDir {
    /// Loads the directory once; an invalid config fails here, so the server never starts on it.
    pub fn load(dir: &Path) -> Result<(ConfigDir, Config), ConfigError> {
        let before = contents(dir);
        let config = Config::load_dir(dir)?;
        Ok((
            ConfigDir {
                dir: dir.to_owned(),
                seen: Mutex::new(before),
            },
            config,
        ))
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Loads the directory again if any key changed since the last attempt. The caller keeps
    /// the config in force when this fails.
    pub fn reload(&self) -> Result<ConfigReload, ConfigError> {
        let now = contents(&self.dir);
        let mut seen = self
            .seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if *seen == now {
            return Ok(ConfigReload::Unchanged);
        }
        *seen = now;
        Ok(ConfigReload::Changed(Arc::new(Config::load_dir(
            &self.dir,
        )?)))
    }
}

/// The bytes of each key's file (`None` when absent or unreadable, which `load_dir` reports).
fn contents(dir: &Path) -> Vec<Option<Vec<u8>>> {
    KEYS.iter()
        .map(|key| std::fs::read(dir.join(key)).ok())
        .collect()
}
