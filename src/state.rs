//! What matters across restarts: raised flags, tightened quotas, rate-spike
//! baselines and the capacity history, saved to `[state] file` every
//! `save_interval` and on shutdown, and loaded at start, so a rollout does
//! not un-throttle a flagged tenant or restart every warm-up.
//!
//! The file is JSON with a format `version`, written to a temporary file
//! beside it, synced, and renamed over it (atomic on one filesystem). A
//! missing, corrupt or incompatible file is a warning and an empty start,
//! never a crash.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::PoisonError;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use crate::capacity::{
    History, SharedTargetHistories, SharedTenantHistories, TargetSample, TenantSample,
};
use crate::detect::{Advice, Baseline, Flag, Judgement, SharedJudgement};

/// The format this build reads and writes.
pub const VERSION: u32 = 1;

/// `[state]`: what survives a restart. Every key takes effect at start-up.
#[derive(Debug, Clone, PartialEq, Deserialize, crate::settings::Reload)]
#[serde(default, deny_unknown_fields)]
pub struct StateSettings {
    /// Where raised flags, tightened quotas, baselines and the capacity
    /// history are saved; `""` (the default) saves nothing.
    #[serde(deserialize_with = "optional_path")]
    pub file: Option<PathBuf>,
    /// How often the state is saved (and once more on shutdown).
    #[serde(with = "crate::settings::serde_text::duration")]
    pub save_interval: Duration,
}

impl Default for StateSettings {
    fn default() -> Self {
        StateSettings {
            file: None,
            save_interval: Duration::from_secs(60),
        }
    }
}

impl StateSettings {
    /// Checks each key on its own.
    pub fn check(&self, p: &mut crate::settings::Problems) {
        p.positive("state.save_interval", self.save_interval);
    }
}

/// A path where `""` means none.
fn optional_path<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<PathBuf>, D::Error> {
    let text = String::deserialize(deserializer)?;
    Ok((!text.trim().is_empty()).then(|| text.trim().into()))
}

/// The saved state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Saved {
    pub version: u32,
    pub saved_unix: f64,
    pub flags: Vec<Flag>,
    pub advice: Vec<Advice>,
    pub baselines: Vec<(String, Baseline)>,
    pub target_history: BTreeMap<String, Vec<TargetSample>>,
    pub tenant_history: Vec<(String, Vec<TenantSample>)>,
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a tenantwatch state file: {detail}")]
    Corrupt { path: PathBuf, detail: String },
    #[error("{path} has format version {found}; this build reads {VERSION}")]
    Version { path: PathBuf, found: u32 },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What the saver reads and the loader fills.
#[derive(Debug, Clone)]
pub struct Persisted {
    pub judgement: SharedJudgement,
    pub histories: SharedTargetHistories,
    pub tenant_histories: SharedTenantHistories,
}

impl Persisted {
    /// The state now.
    pub fn collect(&self) -> Saved {
        let judgement = crate::detect::read_judgement(&self.judgement);
        let target_history = self
            .histories
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(target, h)| (target.clone(), h.samples().copied().collect()))
            .collect();
        let tenant_history = self
            .tenant_histories
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .export();
        Saved {
            version: VERSION,
            saved_unix: unix_now(),
            flags: judgement.flags.clone(),
            advice: judgement.advice.clone(),
            baselines: judgement.baselines.clone(),
            target_history,
            tenant_history,
        }
    }

    /// Puts `saved` back: the detector picks the judgement up when it
    /// starts; histories are refilled within their bounds.
    pub fn restore(&self, saved: Saved, history_len: usize) {
        *self
            .judgement
            .write()
            .unwrap_or_else(PoisonError::into_inner) = std::sync::Arc::new(Judgement {
            flags: saved.flags,
            advice: saved.advice,
            shared_advice: Vec::new(),
            baselines: saved.baselines,
        });
        let mut histories = self
            .histories
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for (target, samples) in saved.target_history {
            histories.insert(target, History::restored(history_len, samples));
        }
        drop(histories);
        self.tenant_histories
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .restore(saved.tenant_history);
    }
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Reads a state file. `Ok(None)` when there is none yet.
pub fn load(path: &Path) -> Result<Option<Saved>, StateError> {
    let text = match std::fs::read(path) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(StateError::Read {
                path: path.to_owned(),
                source,
            });
        }
    };
    #[derive(Deserialize)]
    struct Header {
        version: u32,
    }
    let corrupt = |err: serde_json::Error| StateError::Corrupt {
        path: path.to_owned(),
        detail: err.to_string(),
    };
    let header: Header = serde_json::from_slice(&text).map_err(corrupt)?;
    if header.version != VERSION {
        return Err(StateError::Version {
            path: path.to_owned(),
            found: header.version,
        });
    }
    let saved: Saved = serde_json::from_slice(&text).map_err(corrupt)?;
    Ok(Some(saved))
}

/// Writes `saved` to `path` atomically: a temporary file beside it, synced,
/// then renamed over it.
pub fn save(path: &Path, saved: &Saved) -> Result<(), StateError> {
    let write_error = |source| StateError::Write {
        path: path.to_owned(),
        source,
    };
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let body = serde_json::to_vec(saved).map_err(|e| write_error(std::io::Error::other(e)))?;
    let mut file = std::fs::File::create(&tmp).map_err(write_error)?;
    file.write_all(&body).map_err(write_error)?;
    file.sync_all().map_err(write_error)?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(write_error)
}

/// Loads the file (a warning and an empty start when it cannot be used).
pub fn load_into(settings: &StateSettings, persisted: &Persisted, history_len: usize) {
    let Some(path) = &settings.file else {
        return;
    };
    match load(path) {
        Ok(Some(saved)) => {
            tracing::info!(
                path = %path.display(),
                flags = saved.flags.len(),
                advice = saved.advice.len(),
                "State restored"
            );
            persisted.restore(saved, history_len);
        }
        Ok(None) => tracing::info!(path = %path.display(), "No state file yet; starting empty"),
        Err(err) => {
            tracing::warn!(error = %err, "State file ignored; starting empty");
        }
    }
}

/// Saves every `save_interval` until `shutdown`, then once more.
pub async fn run(settings: StateSettings, persisted: Persisted, shutdown: CancellationToken) {
    let Some(path) = settings.file.clone() else {
        return;
    };
    let mut interval = tokio::time::interval(settings.save_interval);
    interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
    interval.tick().await;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = interval.tick() => {}
        }
        save_now(&path, &persisted).await;
    }
    save_now(&path, &persisted).await;
}

async fn save_now(path: &Path, persisted: &Persisted) {
    let saved = persisted.collect();
    let path = path.to_owned();
    let result = tokio::task::spawn_blocking(move || save(&path, &saved)).await;
    match result {
        Ok(Ok(())) => {}
        Ok(Err(err)) => tracing::warn!(error = %err, "State not saved"),
        Err(err) => tracing::warn!(error = %err, "State not saved"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("tw-state-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn saves_atomically_and_loads_back() {
        let path = dir("roundtrip").join("state.json");
        let saved = Saved {
            version: VERSION,
            saved_unix: 1.0,
            baselines: vec![(
                "t1".into(),
                Baseline {
                    rate: 3.5,
                    samples: 9,
                },
            )],
            ..Saved::default()
        };
        save(&path, &saved).unwrap();
        assert_eq!(load(&path).unwrap(), Some(saved));
        assert!(!path.with_extension("json.tmp").exists());
    }

    #[test]
    fn a_missing_corrupt_or_foreign_file_is_an_error_never_a_panic() {
        let dir = dir("bad");
        assert!(load(&dir.join("absent.json")).unwrap().is_none());
        for (name, text) in [
            ("garbage", "\u{0}\u{1}not json"),
            ("truncated", "{\"version\":1,\"flags\":[{\"tenant\""),
            ("future", "{\"version\":99}"),
            ("wrong", "{\"version\":1,\"flags\":42}"),
        ] {
            let path = dir.join(name);
            std::fs::write(&path, text).unwrap();
            assert!(load(&path).is_err(), "{name}");
        }
    }
}
