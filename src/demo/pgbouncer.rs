//! Throwaway PgBouncers in front of a throwaway cluster, for `tenantwatch
//! demo` and the tests: Debian's `pgbouncer` binary in transaction mode on
//! a free loopback port, trusting the users it is given, its files in a
//! fresh temporary directory. PgBouncer refuses to run as root, so as root
//! it runs as the `postgres` user (its process, not a wrapper: killing it
//! is a crash, as the tests want).

use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::cluster::{ClusterError, free_port, is_root, postgres_ids};

/// The settings of a throwaway PgBouncer.
#[derive(Debug, Clone)]
pub struct PgBouncerSettings {
    /// Port of the PostgreSQL it forwards to (on 127.0.0.1).
    pub backend_port: u16,
    pub default_pool_size: u32,
    pub max_client_conn: u32,
    /// Users it accepts (trusted); `tenantwatch` reads its admin console.
    pub users: Vec<String>,
}

/// A running (or stopped) throwaway PgBouncer.
#[derive(Debug)]
pub struct PgBouncer {
    binary: PathBuf,
    dir: PathBuf,
    port: u16,
    run_as: Option<(u32, u32)>,
    child: Option<Child>,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// The `pgbouncer` binary: on PATH, else Debian's `/usr/sbin/pgbouncer`.
pub fn find_binary() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("pgbouncer"))
            .find(|p| p.is_file())
    });
    on_path.or_else(|| {
        let debian = PathBuf::from("/usr/sbin/pgbouncer");
        debian.is_file().then_some(debian)
    })
}

impl PgBouncer {
    /// Writes the configuration and starts PgBouncer; returns once it
    /// accepts connections.
    pub fn start_new(settings: &PgBouncerSettings) -> Result<PgBouncer, ClusterError> {
        let binary = find_binary().ok_or_else(|| ClusterError::Command {
            action: "find pgbouncer".into(),
            detail: "no pgbouncer binary on PATH or at /usr/sbin/pgbouncer; install it (Debian: apt-get install pgbouncer)".into(),
        })?;
        let run_as = if is_root() {
            Some(postgres_ids()?)
        } else {
            None
        };
        let dir = std::env::temp_dir().join(format!(
            "tenantwatch-pgbouncer-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let io = |source| ClusterError::Io {
            path: dir.clone(),
            source,
        };
        std::fs::create_dir_all(&dir).map_err(io)?;
        let port = free_port();
        let mut users: Vec<String> = settings.users.clone();
        for user in ["postgres", "tenantwatch"] {
            if !users.iter().any(|u| u == user) {
                users.push(user.to_owned());
            }
        }
        let auth: String = users.iter().map(|u| format!("\"{u}\" \"\"\n")).collect();
        std::fs::write(dir.join("users.txt"), auth).map_err(io)?;
        let ini = format!(
            "[databases]\n\
             * = host=127.0.0.1 port={backend}\n\
             [pgbouncer]\n\
             listen_addr = 127.0.0.1\n\
             listen_port = {port}\n\
             unix_socket_dir =\n\
             auth_type = trust\n\
             auth_file = {dir}/users.txt\n\
             admin_users = postgres\n\
             stats_users = tenantwatch\n\
             pool_mode = transaction\n\
             default_pool_size = {pool}\n\
             max_client_conn = {max_clients}\n\
             stats_period = 1\n\
             logfile = {dir}/pgbouncer.log\n",
            backend = settings.backend_port,
            dir = dir.display(),
            pool = settings.default_pool_size,
            max_clients = settings.max_client_conn,
        );
        std::fs::write(dir.join("pgbouncer.ini"), ini).map_err(io)?;
        if let Some((uid, gid)) = run_as {
            for entry in ["", "users.txt", "pgbouncer.ini"] {
                std::os::unix::fs::chown(dir.join(entry), Some(uid), Some(gid)).map_err(io)?;
            }
        }
        let mut pgbouncer = PgBouncer {
            binary,
            dir,
            port,
            run_as,
            child: None,
        };
        pgbouncer.start()?;
        Ok(pgbouncer)
    }

    /// Starts the (stopped) PgBouncer on its port and waits until it
    /// accepts connections.
    pub fn start(&mut self) -> Result<(), ClusterError> {
        let mut command = Command::new(&self.binary);
        command
            .arg(self.dir.join("pgbouncer.ini"))
            .current_dir(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some((uid, gid)) = self.run_as {
            command.uid(uid).gid(gid);
        }
        let child = command.spawn().map_err(|e| ClusterError::Command {
            action: "start pgbouncer".into(),
            detail: format!("{}: {e}", self.binary.display()),
        })?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if Instant::now() > deadline {
                let log =
                    std::fs::read_to_string(self.dir.join("pgbouncer.log")).unwrap_or_default();
                self.stop();
                return Err(ClusterError::Command {
                    action: "start pgbouncer".into(),
                    detail: format!("it did not listen on port {} within 10 s\n{log}", self.port),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Kills PgBouncer (as a crash would) and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// A DSN through the pool to `dbname` as `user`.
    pub fn dsn(&self, dbname: &str, user: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user={user} dbname={dbname}",
            self.port
        )
    }

    /// The admin console as the stats user `tenantwatch`.
    pub fn admin_dsn(&self) -> String {
        self.dsn("pgbouncer", "tenantwatch")
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
