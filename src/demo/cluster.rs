//! Throwaway PostgreSQL clusters, for `tenantwatch demo` and the tests.
//!
//! A cluster lives in a fresh temporary directory, listens on a free
//! loopback port (and a Unix socket inside its directory), trusts local
//! connections, and is stopped and removed on drop. PostgreSQL refuses to run
//! as root, so as root the server binaries run as the `postgres` user, which
//! then owns the directory.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(
        "PostgreSQL server binaries (initdb, pg_ctl) not found on PATH or under /usr/lib/postgresql/*/bin; install them (Debian: apt-get install postgresql)"
    )]
    BinariesNotFound,
    #[error("running as root, but there is no postgres user to run PostgreSQL as: {0}")]
    NoPostgresUser(String),
    #[error("failed to {action}: {detail}")]
    Command { action: String, detail: String },
    #[error("failed to prepare {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A running throwaway cluster.
#[derive(Debug)]
pub struct Cluster {
    bin_dir: PathBuf,
    dir: PathBuf,
    port: u16,
    max_connections: u32,
    /// (uid, gid) of the postgres user when we are root.
    run_as: Option<(u32, u32)>,
}

static CLUSTER_COUNTER: AtomicU32 = AtomicU32::new(0);

/// Finds the directory of `initdb` and `pg_ctl` (and the other server
/// programs): on PATH (through symlinks), else the newest
/// `/usr/lib/postgresql/<version>/bin`.
pub fn find_bin_dir() -> Result<PathBuf, ClusterError> {
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            if dir.join("initdb").is_file() && dir.join("pg_ctl").is_file() {
                // A symlink (say /usr/local/bin/initdb) leads to the
                // directory that also holds pg_basebackup and pg_dump.
                let real = std::fs::canonicalize(dir.join("initdb"))
                    .ok()
                    .and_then(|initdb| initdb.parent().map(Path::to_path_buf))
                    .filter(|real| real.join("pg_ctl").is_file());
                return Ok(real.unwrap_or(dir));
            }
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .map_err(|_| ClusterError::BinariesNotFound)?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version: u32 = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            (bin.join("initdb").is_file() && bin.join("pg_ctl").is_file()).then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, bin)| bin)
        .ok_or(ClusterError::BinariesNotFound)
}

pub(crate) fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
        .unwrap_or(false)
}

pub(crate) fn postgres_ids() -> Result<(u32, u32), ClusterError> {
    let id = |flag: &str| -> Result<u32, ClusterError> {
        let out = Command::new("id")
            .args([flag, "postgres"])
            .output()
            .map_err(|e| ClusterError::NoPostgresUser(e.to_string()))?;
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .map_err(|_| ClusterError::NoPostgresUser(String::from_utf8_lossy(&out.stderr).into()))
    };
    Ok((id("-u")?, id("-g")?))
}

/// A free TCP port on loopback (free when asked; the server binds it next).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

impl Cluster {
    /// Initialises and starts a new cluster.
    pub fn start_new() -> Result<Cluster, ClusterError> {
        Cluster::start_new_with_max_connections(100)
    }

    /// As [`Cluster::start_new`], with `max_connections` (benchmarks that
    /// compare a connection per database need more than the 100 default).
    pub fn start_new_with_max_connections(max_connections: u32) -> Result<Cluster, ClusterError> {
        let bin_dir = find_bin_dir()?;
        let run_as = if is_root() {
            Some(postgres_ids()?)
        } else {
            None
        };
        let mut cluster = Cluster::empty(bin_dir, run_as)?;
        cluster.max_connections = max_connections;
        let data = cluster.data_dir();
        cluster.run(
            "initdb",
            &[
                "-D",
                &data,
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
                "--no-instructions",
            ],
            "initialise a cluster",
        )?;
        cluster.start()?;
        Ok(cluster)
    }

    /// A fresh directory (owned by the postgres user when we are root) and
    /// a free port, with no data directory yet.
    fn empty(bin_dir: PathBuf, run_as: Option<(u32, u32)>) -> Result<Cluster, ClusterError> {
        let dir = std::env::temp_dir().join(format!(
            "tenantwatch-pg-{}-{}",
            std::process::id(),
            CLUSTER_COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let io = |source| ClusterError::Io {
            path: dir.clone(),
            source,
        };
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(io)?;
        }
        std::fs::create_dir_all(&dir).map_err(io)?;
        if let Some((uid, gid)) = run_as {
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).map_err(io)?;
        }
        Ok(Cluster {
            bin_dir,
            dir,
            port: free_port(),
            max_connections: 100,
            run_as,
        })
    }

    /// A streaming standby of this (running) cluster: `pg_basebackup -R`
    /// into a new throwaway cluster, started on its own port. It reports to
    /// the primary as `name` (`cluster_name`, which the WAL receiver uses as
    /// its `application_name` in `pg_stat_replication`).
    pub fn start_standby(&self, name: &str) -> Result<Cluster, ClusterError> {
        self.primary().start_standby(name)
    }

    /// What a standby needs of this cluster, to make one on another thread.
    pub fn primary(&self) -> Primary {
        Primary {
            bin_dir: self.bin_dir.clone(),
            run_as: self.run_as,
            port: self.port,
        }
    }

    fn data_dir(&self) -> String {
        self.dir.join("data").display().to_string()
    }

    fn run(&self, program: &str, args: &[&str], action: &str) -> Result<String, ClusterError> {
        let program = self.bin_dir.join(program);
        let mut command = if self.run_as.is_some() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&program);
            c
        } else {
            Command::new(&program)
        };
        let out = command
            .args(args)
            .current_dir(&self.dir)
            .output()
            .map_err(|e| ClusterError::Command {
                action: action.into(),
                detail: format!("{}: {e}", program.display()),
            })?;
        if !out.status.success() {
            return Err(ClusterError::Command {
                action: action.into(),
                detail: format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Starts the (stopped) cluster on its port and waits until it accepts
    /// connections.
    pub fn start(&self) -> Result<(), ClusterError> {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections={} -c track_activity_query_size=32768",
            self.port,
            self.dir.display(),
            self.max_connections
        );
        let log = self.dir.join("postgres.log").display().to_string();
        let data = self.data_dir();
        self.run(
            "pg_ctl",
            &[
                "-D", &data, "-o", &options, "-l", &log, "-w", "-t", "60", "start",
            ],
            "start PostgreSQL",
        )
        .map_err(|err| match err {
            ClusterError::Command { action, detail } => ClusterError::Command {
                action,
                detail: format!(
                    "{detail}\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                ),
            },
            other => other,
        })?;
        Ok(())
    }

    /// Stops the cluster (fast shutdown: connections are cut).
    pub fn stop(&self) -> Result<(), ClusterError> {
        let data = self.data_dir();
        self.run(
            "pg_ctl",
            &["-D", &data, "-m", "fast", "-w", "stop"],
            "stop PostgreSQL",
        )?;
        Ok(())
    }

    /// Stops and starts the cluster on the same port.
    pub fn restart(&self) -> Result<(), ClusterError> {
        self.stop()?;
        self.start()
    }

    /// Turns TLS on with a server certificate for `127.0.0.1` signed by a
    /// fresh CA (made with the `openssl` command), restarts, and returns the
    /// CA certificate's path.
    pub fn enable_tls(&self) -> Result<PathBuf, ClusterError> {
        let data = self.dir.join("data");
        let ca = self.dir.join("ca.crt");
        let openssl = |args: &[&str], action: &str| -> Result<(), ClusterError> {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(&data)
                .output()
                .map_err(|e| ClusterError::Command {
                    action: action.into(),
                    detail: format!("openssl: {e} (install the openssl package)"),
                })?;
            if out.status.success() {
                Ok(())
            } else {
                Err(ClusterError::Command {
                    action: action.into(),
                    detail: String::from_utf8_lossy(&out.stderr).into_owned(),
                })
            }
        };
        let ca_path = ca.display().to_string();
        let ca_key = self.dir.join("ca.key").display().to_string();
        openssl(
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/CN=tenantwatch test CA",
                "-keyout",
                &ca_key,
                "-out",
                &ca_path,
            ],
            "make a CA",
        )?;
        openssl(
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                "/CN=127.0.0.1",
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
            ],
            "make a server key",
        )?;
        let ext = self.dir.join("san.ext");
        std::fs::write(&ext, "subjectAltName=IP:127.0.0.1\n").map_err(|source| {
            ClusterError::Io {
                path: ext.clone(),
                source,
            }
        })?;
        openssl(
            &[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                &ca_path,
                "-CAkey",
                &ca_key,
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                &ext.display().to_string(),
                "-out",
                "server.crt",
            ],
            "sign the server certificate",
        )?;
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| ClusterError::Io { path, source }
        };
        let key = data.join("server.key");
        std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .map_err(io(&key))?;
        if let Some((uid, gid)) = self.run_as {
            for file in ["server.key", "server.crt"] {
                let path = data.join(file);
                std::os::unix::fs::chown(&path, Some(uid), Some(gid)).map_err(io(&path))?;
            }
        }
        let conf = data.join("postgresql.auto.conf");
        let mut settings = std::fs::read_to_string(&conf).unwrap_or_default();
        settings.push_str("ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n");
        std::fs::write(&conf, settings).map_err(io(&conf))?;
        self.restart()?;
        Ok(ca)
    }

    /// Appends `settings` (postgresql.conf lines) to the cluster's
    /// `postgresql.auto.conf` and restarts it, for settings that need a
    /// restart (`shared_preload_libraries`).
    pub fn configure(&self, settings: &str) -> Result<(), ClusterError> {
        let conf = self.dir.join("data").join("postgresql.auto.conf");
        let io = |source| ClusterError::Io {
            path: conf.clone(),
            source,
        };
        let mut text = std::fs::read_to_string(&conf).map_err(io)?;
        text.push_str(settings);
        text.push('\n');
        std::fs::write(&conf, text).map_err(io)?;
        self.restart()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A libpq key=value DSN for `dbname` as the `postgres` superuser.
    pub fn dsn(&self, dbname: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname={dbname}",
            self.port
        )
    }
}

/// A running cluster as a standby's source: see [`Cluster::primary`].
#[derive(Debug, Clone)]
pub struct Primary {
    bin_dir: PathBuf,
    run_as: Option<(u32, u32)>,
    port: u16,
}

impl Primary {
    /// A streaming standby: `pg_basebackup -R` into a new throwaway
    /// cluster, started on its own port, reporting to the primary as `name`.
    pub fn start_standby(self, name: &str) -> Result<Cluster, ClusterError> {
        let standby = Cluster::empty(self.bin_dir.clone(), self.run_as)?;
        let data = standby.data_dir();
        standby.run(
            "pg_basebackup",
            &[
                "-D",
                &data,
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-R",
                "-X",
                "stream",
                "--checkpoint=fast",
                "--no-sync",
            ],
            "take a base backup for a standby",
        )?;
        let conf = standby.dir.join("data").join("postgresql.auto.conf");
        let io = |source| ClusterError::Io {
            path: conf.clone(),
            source,
        };
        let mut settings = std::fs::read_to_string(&conf).map_err(io)?;
        settings.push_str(&format!("cluster_name = '{name}'\n"));
        std::fs::write(&conf, settings).map_err(io)?;
        standby.start()?;
        Ok(standby)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let data = self.data_dir();
        let _ = self.run(
            "pg_ctl",
            &["-D", &data, "-m", "immediate", "-w", "stop"],
            "stop",
        );
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
