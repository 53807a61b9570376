//! What matters across restarts: raised flags, tightened quotas, rate-spike
//! baselines, the capacity history and each target's last exact tenant
//! sizes, saved to `[state] file` every
//! `save_interval`, within a second of a change of flags or advice, and on
//! shutdown, and loaded at start, so a rollout does
//! not un-throttle a flagged tenant or restart every warm-up.
//!
//! The file is JSON with a format `version`. It is written to a new
//! temporary file beside it (a unique name, created with `O_EXCL` and mode
//! 0600, so a symlink or file planted there is never followed or reused),
//! synced, renamed over it (atomic on one filesystem), and the directory is
//! synced so the rename survives a power loss. A missing, corrupt,
//! incompatible or oversize (over [`MAX_FILE_BYTES`]) file is a warning and
//! an empty start, never a crash; restored advice, baselines and flags pass
//! the same checks as live ones (a NaN or negative quota is dropped).

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::PoisonError;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use crate::capacity::{
    History, SharedTargetHistories, SharedTenantHistories, TargetSample, TenantSample,
};
use crate::detect::{Advice, Baseline, Flag, Judgement, RuleName, SharedJudgement};

/// The format this build reads and writes.
pub const VERSION: u32 = 1;

/// A state file larger than this is refused at load (64 MiB): the state
/// of a 10,000-tenant fleet with a full history is a few MiB, so a larger
/// file is not one this build wrote, and reading it whole would cost that
/// much memory.
pub const MAX_FILE_BYTES: u64 = 64 * 1024 * 1024;

/// `[state]`: what survives a restart. Every key takes effect at start-up.
#[derive(Debug, Clone, PartialEq, Deserialize, crate::settings::Reload)]
#[serde(default, deny_unknown_fields)]
pub struct StateSettings {
    /// Where raised flags, tightened quotas, baselines, the capacity
    /// history and the targets' last exact tenant sizes are saved; `""`
    /// (the default) saves nothing.
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
    /// Per target, each tenant's exact size from its last complete size
    /// cycle. Restored, it stands until the restarted daemon's first
    /// complete cycle, so the size series and the growth fitted over it do
    /// not step from the exact figure to the `relpages` estimate and back
    /// at a restart. Absent from files of older builds.
    #[serde(default)]
    pub exact_sizes: BTreeMap<String, BTreeMap<String, u64>>,
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
    #[error(
        "{path} is {size} bytes, over the {MAX_FILE_BYTES}-byte limit of a state file; \
         move it away to start empty"
    )]
    TooLarge { path: PathBuf, size: u64 },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl StateError {
    /// Why, as a short word for a log field.
    pub fn reason(&self) -> &'static str {
        match self {
            StateError::Read { .. } => "read",
            StateError::Corrupt { .. } => "corrupt",
            StateError::Version { .. } => "version",
            StateError::TooLarge { .. } => "too_large",
            StateError::Write { .. } => "write",
        }
    }
}

/// What the saver reads and the loader fills.
#[derive(Debug, Clone)]
pub struct Persisted {
    pub judgement: SharedJudgement,
    pub histories: SharedTargetHistories,
    pub tenant_histories: SharedTenantHistories,
    /// The targets, for their last exact sizes.
    pub targets: crate::store::TargetStatuses,
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
        let exact_sizes = self
            .targets
            .snapshot()
            .into_iter()
            .filter_map(|t| Some((t.name, t.exact_sizes?.as_ref().clone())))
            .collect();
        Saved {
            version: VERSION,
            saved_unix: unix_now(),
            flags: judgement.flags.clone(),
            advice: judgement.advice.clone(),
            baselines: judgement.baselines.clone(),
            target_history,
            tenant_history,
            exact_sizes,
        }
    }

    /// Puts `saved` back: the detector picks the judgement up when it
    /// starts; histories are refilled within their bounds. Advice,
    /// baselines and flags whose figures no detector would produce (NaN,
    /// infinite, a quota not above zero) are dropped: how many is returned.
    pub fn restore(&self, mut saved: Saved, history_len: usize) -> usize {
        let before = saved.advice.len() + saved.baselines.len() + saved.flags.len();
        saved.advice.retain(crate::detect::advice::enforceable);
        saved
            .baselines
            .retain(|(_, b)| b.rate.is_finite() && b.rate >= 0.0);
        saved
            .flags
            .retain(|f| f.since.is_finite() && f.value.is_finite() && f.threshold.is_finite());
        let dropped = before - (saved.advice.len() + saved.baselines.len() + saved.flags.len());
        *self
            .judgement
            .write()
            .unwrap_or_else(PoisonError::into_inner) = std::sync::Arc::new(Judgement {
            flags: saved.flags,
            advice: saved.advice,
            shared_advice: Vec::new(),
            baselines: saved.baselines,
            ..Judgement::default()
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
        // Only for targets still configured, and never over sizes a
        // collector already published.
        for status in self.targets.handles() {
            let mut status = crate::store::lock(status);
            if status.exact_sizes.is_none()
                && let Some(sizes) = saved.exact_sizes.remove(&status.name)
            {
                status.exact_sizes = Some(std::sync::Arc::new(sizes));
            }
        }
        dropped
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
    load_at_most(path, MAX_FILE_BYTES)
}

/// [`load`], refusing a file over `max_bytes`.
fn load_at_most(path: &Path, max_bytes: u64) -> Result<Option<Saved>, StateError> {
    let read_error = |source| StateError::Read {
        path: path.to_owned(),
        source,
    };
    let too_large = |size| StateError::TooLarge {
        path: path.to_owned(),
        size,
    };
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(read_error(source)),
    };
    let size = file.metadata().map_err(read_error)?.len();
    if size > max_bytes {
        return Err(too_large(size));
    }
    // The length may change, or not be known (a pipe, a device): read at
    // most one byte over the limit to tell.
    let mut text = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    file.take(max_bytes.saturating_add(1))
        .read_to_end(&mut text)
        .map_err(read_error)?;
    if text.len() as u64 > max_bytes {
        return Err(too_large(text.len() as u64));
    }
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

/// Writes `saved` to `path` atomically: a new temporary file beside it
/// (see `create_temporary`), synced, renamed over it, and the directory
/// synced. On an error the temporary file is removed.
pub fn save(path: &Path, saved: &Saved) -> Result<(), StateError> {
    let write_error = |source| StateError::Write {
        path: path.to_owned(),
        source,
    };
    let (mut file, tmp) = create_temporary(path).map_err(write_error)?;
    let written = write_json(saved, &mut file)
        .and_then(|()| file.sync_all())
        .and_then(|()| {
            drop(file);
            std::fs::rename(&tmp, path)
        });
    if let Err(err) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(write_error(err));
    }
    sync_directory(path).map_err(write_error)
}

/// The most of the state's JSON held in memory at once while it is saved.
const WRITE_BUFFER_BYTES: usize = 64 * 1024;

/// Writes `saved` as JSON to `out` through a buffer of
/// [`WRITE_BUFFER_BYTES`], never the whole text at once: with a full
/// capacity history the text is megabytes, and it was made whole every
/// `save_interval`, a passing peak of that size (issue 26).
fn write_json(saved: &Saved, out: impl std::io::Write) -> std::io::Result<()> {
    let mut out = std::io::BufWriter::with_capacity(WRITE_BUFFER_BYTES, out);
    serde_json::to_writer(&mut out, saved).map_err(std::io::Error::from)?;
    out.flush()
}

/// The directory `path` is in (`.` for a bare file name).
fn directory_of(path: &Path) -> &Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

/// Creates a temporary file beside `path` under a name no other save uses
/// (`<file>.<pid>.<n>.tmp`), with `O_EXCL` (a symlink or file already there
/// is an error, never followed or truncated) and mode 0600 (the state names
/// tenants and their quotas; it is nobody else's to read).
fn create_temporary(path: &Path) -> std::io::Result<(std::fs::File, PathBuf)> {
    static SAVES: AtomicU64 = AtomicU64::new(0);
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other("the state file path names no file"))?;
    let dir = directory_of(path);
    let mut attempt = 0;
    loop {
        let mut tmp_name = name.to_owned();
        tmp_name.push(format!(
            ".{}.{}.tmp",
            std::process::id(),
            SAVES.fetch_add(1, Ordering::Relaxed)
        ));
        let tmp = dir.join(tmp_name);
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        match options.open(&tmp) {
            Ok(file) => return Ok((file, tmp)),
            // Left by an earlier process with our pid, or planted: take
            // the next name.
            Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists && attempt < 16 => {
                attempt += 1;
            }
            Err(err) => return Err(err),
        }
    }
}

/// Syncs the directory holding `path`, so that the rename is durable.
fn sync_directory(path: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    std::fs::File::open(directory_of(path))?.sync_all()?;
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

/// Loads the file (a warning and an empty start when it cannot be used).
pub fn load_into(settings: &StateSettings, persisted: &Persisted, history_len: usize) {
    let Some(path) = &settings.file else {
        return;
    };
    match load(path) {
        Ok(Some(saved)) => {
            let (flags, advice) = (saved.flags.len(), saved.advice.len());
            let dropped = persisted.restore(saved, history_len);
            tracing::info!(path = %path.display(), flags, advice, "State restored");
            if dropped > 0 {
                tracing::warn!(
                    path = %path.display(),
                    dropped,
                    "State file entries with NaN, infinite or non-positive figures dropped"
                );
            }
        }
        Ok(None) => tracing::info!(path = %path.display(), "No state file yet; starting empty"),
        Err(err) => {
            tracing::warn!(
                reason = err.reason(),
                error = %err,
                "State file ignored; starting empty"
            );
        }
    }
}

/// How often the judgement is compared with the one last saved.
const JUDGEMENT_CHECK: Duration = Duration::from_secs(1);

/// What a restarted daemon acts on from its first check: which tenants are
/// flagged for what, and which quotas are tightened to what.
type Acts = (Vec<(String, RuleName)>, Vec<(String, u64)>);

fn acts(persisted: &Persisted) -> Acts {
    let judgement = crate::detect::read_judgement(&persisted.judgement);
    let flags = judgement
        .flags
        .iter()
        .map(|f| (f.tenant.clone(), f.reason))
        .collect();
    let advice = judgement
        .advice
        .iter()
        .map(|a| (a.tenant.clone(), a.effective_qps.to_bits()))
        .collect();
    (flags, advice)
}

/// Saves every `save_interval`, and within [`JUDGEMENT_CHECK`] of a change
/// of flags or advice, until `shutdown`, then once more. Without the
/// second, a daemon killed just after a flag cleared restored the flag
/// (and throttled its tenant) until its first evaluation (found by the
/// soak, issue 26).
pub async fn run(settings: StateSettings, persisted: Persisted, shutdown: CancellationToken) {
    let Some(path) = settings.file.clone() else {
        return;
    };
    let mut interval = tokio::time::interval(settings.save_interval);
    interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
    interval.tick().await;
    let mut check = tokio::time::interval(JUDGEMENT_CHECK);
    check.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut saved = acts(&persisted);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = interval.tick() => {}
            _ = check.tick() => {
                if acts(&persisted) == saved {
                    continue;
                }
            }
        }
        saved = acts(&persisted);
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
        let left: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, ["state.json"], "no temporary file is left behind");
    }

    #[test]
    fn a_large_state_is_written_in_pieces_not_made_whole_first() {
        /// Records the bytes and the largest single write it is given.
        #[derive(Default)]
        struct Recorder {
            bytes: Vec<u8>,
            largest_write: usize,
        }
        impl std::io::Write for Recorder {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.largest_write = self.largest_write.max(buf.len());
                self.bytes.extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let saved = Saved {
            version: VERSION,
            baselines: (0..20_000)
                .map(|i| {
                    (
                        format!("tenant-{i:05}"),
                        Baseline {
                            rate: f64::from(i) / 7.0,
                            samples: 9,
                        },
                    )
                })
                .collect(),
            ..Saved::default()
        };
        let mut recorder = Recorder::default();
        write_json(&saved, &mut recorder).unwrap();
        let whole = serde_json::to_vec(&saved).unwrap();
        assert!(
            whole.len() > 8 * WRITE_BUFFER_BYTES,
            "{} bytes",
            whole.len()
        );
        assert_eq!(recorder.bytes, whole, "the same text as made whole");
        assert!(
            recorder.largest_write <= WRITE_BUFFER_BYTES,
            "a write of {} bytes",
            recorder.largest_write
        );
    }

    #[cfg(unix)]
    #[test]
    fn a_symlink_planted_at_the_old_temporary_path_is_not_followed() {
        let dir = dir("symlink");
        let path = dir.join("state.json");
        let victim = dir.join("victim");
        std::fs::write(&victim, "precious").unwrap();
        let planted = dir.join("state.json.tmp");
        let _ = std::fs::remove_file(&planted);
        std::os::unix::fs::symlink(&victim, &planted).unwrap();
        let saved = Saved {
            version: VERSION,
            ..Saved::default()
        };
        save(&path, &saved).unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        assert!(
            !std::fs::symlink_metadata(&path)
                .unwrap()
                .file_type()
                .is_symlink(),
            "the state file is a file of its own"
        );
        assert_eq!(load(&path).unwrap(), Some(saved));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn the_state_file_is_readable_by_its_owner_only() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = dir("mode");
        let path = dir.join("state.json");
        // An older file with wider permissions is replaced, not reused.
        std::fs::write(&path, "{}").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        save(&path, &Saved::default()).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "mode {mode:o}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_oversize_file_is_refused() {
        let dir = dir("oversize");
        let path = dir.join("state.json");
        // Sparse: costs no disk.
        let file = std::fs::File::create(&path).unwrap();
        file.set_len(MAX_FILE_BYTES + 1).unwrap();
        drop(file);
        let err = load(&path).unwrap_err();
        assert!(matches!(err, StateError::TooLarge { size, .. } if size == MAX_FILE_BYTES + 1));
        assert_eq!(err.reason(), "too_large");
        assert!(err.to_string().contains("67108864-byte limit"), "{err}");
        // A valid file over a smaller limit is refused just the same.
        let saved = Saved {
            version: VERSION,
            ..Saved::default()
        };
        save(&path, &saved).unwrap();
        assert!(load_at_most(&path, 1_000_000).unwrap().is_some());
        assert!(matches!(
            load_at_most(&path, 10),
            Err(StateError::TooLarge { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn restored_advice_baselines_and_flags_must_be_finite() {
        let advice = |tenant: &str, effective_qps: f64, base_qps: f64| Advice {
            tenant: tenant.into(),
            base_qps,
            effective_qps,
            reason: crate::detect::RuleName::DbTimeHog,
            since: 1.0,
            relaxing: false,
            instance: None,
        };
        let flag = |tenant: &str, value: f64| Flag {
            tenant: tenant.into(),
            reason: crate::detect::RuleName::DbTimeHog,
            severity: crate::detect::Severity::Warning,
            since: 1.0,
            value,
            threshold: 0.5,
            target: None,
            action: crate::detect::FlagAction::Tighten,
        };
        let saved = Saved {
            version: VERSION,
            advice: vec![
                advice("good", 2.5, 100.0),
                advice("nan", f64::NAN, 100.0),
                advice("negative", -1.0, 100.0),
                advice("zero", 0.0, 100.0),
                advice("inf", f64::INFINITY, 100.0),
                advice("nan_base", 2.5, f64::NAN),
            ],
            baselines: vec![
                (
                    "good".into(),
                    Baseline {
                        rate: 3.0,
                        samples: 4,
                    },
                ),
                (
                    "nan".into(),
                    Baseline {
                        rate: f64::NAN,
                        samples: 4,
                    },
                ),
                (
                    "neg".into(),
                    Baseline {
                        rate: -3.0,
                        samples: 4,
                    },
                ),
            ],
            flags: vec![flag("good", 0.9), flag("inf", f64::INFINITY)],
            ..Saved::default()
        };
        let restored = |candidate: Saved| {
            let persisted = Persisted {
                judgement: SharedJudgement::default(),
                histories: SharedTargetHistories::default(),
                tenant_histories: SharedTenantHistories::default(),
                targets: crate::store::TargetStatuses::default(),
            };
            let dropped = persisted.restore(candidate, 10);
            (crate::detect::read_judgement(&persisted.judgement), dropped)
        };
        let (judgement, dropped) = restored(saved);
        let tenants: Vec<&str> = judgement.advice.iter().map(|a| a.tenant.as_str()).collect();
        assert_eq!(tenants, ["good"]);
        let baselines: Vec<&str> = judgement.baselines.iter().map(|b| b.0.as_str()).collect();
        assert_eq!(baselines, ["good"]);
        let flags: Vec<&str> = judgement.flags.iter().map(|f| f.tenant.as_str()).collect();
        assert_eq!(flags, ["good"]);
        assert_eq!(dropped, 5 + 2 + 1);

        // Through a file, as a restart reads it: JSON has no NaN or
        // infinity, but a negative or zero quota parses.
        let dir = dir("finite");
        let path = dir.join("state.json");
        std::fs::write(
            &path,
            r#"{"version":1,"saved_unix":1.0,"flags":[],"baselines":[],
                "target_history":{},"tenant_history":[],"advice":[
                {"tenant":"good","base_qps":100.0,"effective_qps":2.5,"reason":"db_time_hog",
                 "since":1.0,"relaxing":false},
                {"tenant":"negative","base_qps":100.0,"effective_qps":-5.0,
                 "reason":"db_time_hog","since":1.0,"relaxing":false},
                {"tenant":"zero","base_qps":100.0,"effective_qps":0.0,
                 "reason":"db_time_hog","since":1.0,"relaxing":true}]}"#,
        )
        .unwrap();
        let loaded = load(&path).unwrap().unwrap();
        assert_eq!(loaded.advice.len(), 3);
        let (judgement, dropped) = restored(loaded);
        assert_eq!(judgement.advice.len(), 1);
        assert_eq!(judgement.advice[0].tenant, "good");
        assert_eq!(dropped, 2);
        std::fs::remove_dir_all(&dir).unwrap();
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

    #[test]
    fn exact_sizes_come_back_for_configured_targets_only() {
        use crate::store::{SchemaDetail, TargetStatus, TargetStatuses, lock};
        use std::sync::{Arc, Mutex};
        let targets = |names: &[&str]| {
            TargetStatuses::new(
                names
                    .iter()
                    .map(|n| Arc::new(Mutex::new(TargetStatus::new(n, "", SchemaDetail::Basic))))
                    .collect(),
            )
        };
        let persisted = |targets: TargetStatuses| Persisted {
            judgement: SharedJudgement::default(),
            histories: SharedTargetHistories::default(),
            tenant_histories: SharedTenantHistories::default(),
            targets,
        };
        let before = persisted(targets(&["main", "gone"]));
        for (status, bytes) in before.targets.handles().iter().zip([7_u64, 9]) {
            lock(status).exact_sizes = Some(Arc::new(BTreeMap::from([("a".to_owned(), bytes)])));
        }
        let saved: Saved =
            serde_json::from_str(&serde_json::to_string(&before.collect()).unwrap()).unwrap();
        assert_eq!(saved.exact_sizes.len(), 2);

        // Restarted with "main", "other" and without "gone"; "other" has
        // already measured (a collector's figures are never overwritten).
        let after = persisted(targets(&["main", "other"]));
        let fresh = Arc::new(BTreeMap::from([("b".to_owned(), 1_u64)]));
        lock(&after.targets.handles()[1]).exact_sizes = Some(fresh.clone());
        after.restore(saved, 10);
        let sizes: Vec<_> = after
            .targets
            .snapshot()
            .into_iter()
            .map(|t| t.exact_sizes.map(|s| s.as_ref().clone()))
            .collect();
        assert_eq!(
            sizes,
            [
                Some(BTreeMap::from([("a".to_owned(), 7)])),
                Some(fresh.as_ref().clone())
            ]
        );
        // A file of an older build has no sizes at all.
        let old: Saved = serde_json::from_str(
            r#"{"version":1,"saved_unix":0,"flags":[],"advice":[],"baselines":[],"target_history":{},"tenant_history":[]}"#,
        )
        .unwrap();
        assert!(old.exact_sizes.is_empty());
    }
}
