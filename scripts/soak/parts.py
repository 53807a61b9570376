"""The real parts of the soak, each on a free loopback port under one run
directory: a PostgreSQL primary and its streaming standby, a PgBouncer in
transaction mode, a Redis, the tenantwatch daemons and a Prometheus.

Each part is a small class that starts, stops and signals its process and
knows how to tell that it is ready again; the fault schedule uses only these
methods. As root, PostgreSQL and PgBouncer run as the `postgres` user (both
refuse root)."""

import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import time

ROOT = os.geteuid() == 0


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_udp_port():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def need(binary, package):
    path = shutil.which(binary)
    if path is None:
        for candidate in [*glob.glob(f"/usr/lib/postgresql/*/bin/{binary}"), f"/usr/sbin/{binary}"]:
            if os.path.exists(candidate):
                return candidate
        raise SystemExit(
            f"soak: `{binary}` is missing; install it (Debian: apt-get install {package})"
        )
    return path


def as_pg(cmd):
    """Runs PostgreSQL and PgBouncer as `postgres` when we are root."""
    return ["runuser", "-u", "postgres", "--", *cmd] if ROOT else cmd


def wait_port(port, timeout=30.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.1)
    return False


def chown_pg(path):
    if ROOT:
        shutil.chown(path, "postgres", "postgres")


class Postgres:
    """One PostgreSQL server (primary or standby) run with pg_ctl."""

    def __init__(self, name, data, port, sockdir):
        self.name, self.data, self.port, self.sockdir = name, data, port, sockdir
        self.pg_ctl = need("pg_ctl", "postgresql")
        self.log = os.path.join(os.path.dirname(data), f"{name}.log")

    def start(self):
        self.ctl("start")

    def stop(self, mode="fast"):
        subprocess.run(
            as_pg([self.pg_ctl, "-D", self.data, "-m", mode, "-w", "-t", "60", "stop"]),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def restart(self):
        self.ctl("restart", "-m", "fast")

    def ctl(self, action, *options):
        """`pg_ctl start` or `restart` with the cluster's port, socket
        directory and log, waiting up to 60 s for it to be ready."""
        opts = f"-p {self.port} -k {self.sockdir}"
        subprocess.run(
            as_pg(
                [
                    self.pg_ctl,
                    "-D",
                    self.data,
                    "-l",
                    self.log,
                    "-o",
                    opts,
                    *options,
                    "-w",
                    "-t",
                    "60",
                    action,
                ]
            ),
            check=True,
            stdout=subprocess.DEVNULL,
        )

    def pid(self):
        try:
            with open(os.path.join(self.data, "postmaster.pid")) as f:
                return int(f.readline())
        except (OSError, ValueError):
            return None

    def signal(self, sig):
        pid = self.pid()
        if pid:
            os.kill(pid, sig)

    def freeze_all(self, sig):
        """SIGSTOP/SIGCONT the postmaster and every backend: a hung server."""
        pid = self.pid()
        if not pid:
            return
        children = subprocess.run(
            ["pgrep", "-P", str(pid)], capture_output=True, text=True
        ).stdout.split()
        for p in [pid] + [int(c) for c in children]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, sig)

    def ready(self):
        return (
            subprocess.run(["pg_isready", "-q", "-h", "127.0.0.1", "-p", str(self.port)]).returncode
            == 0
        )


def psql(port, db, sql, user="postgres", check=True, timeout=600):
    """One psql run; a hung server (a PAUSE that waits on a transaction)
    gives up after `timeout` seconds as a failed run."""
    argv = [
        "psql",
        "-X",
        "-q",
        "-v",
        "ON_ERROR_STOP=1",
        "-h",
        "127.0.0.1",
        "-p",
        str(port),
        "-U",
        user,
        "-d",
        db,
    ]
    try:
        return subprocess.run(
            argv, input=sql, text=True, capture_output=True, check=check, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        if check:
            raise
        return subprocess.CompletedProcess(argv, 124, "", "timed out")


def make_cluster(run_dir, schemas, databases):
    """initdb, the tenant schemas and databases, then a streaming standby
    made with pg_basebackup. Returns (primary, standby)."""
    initdb = need("initdb", "postgresql")
    need("pg_basebackup", "postgresql-client")
    sockdir = os.path.join(run_dir, "sock")
    os.makedirs(sockdir, exist_ok=True)
    chown_pg(sockdir)
    data1 = os.path.join(run_dir, "pg-primary")
    os.makedirs(data1)
    chown_pg(data1)
    subprocess.run(
        as_pg([initdb, "-D", data1, "-U", "postgres", "--auth=trust", "-E", "UTF8"]),
        check=True,
        stdout=subprocess.DEVNULL,
    )
    with open(os.path.join(data1, "postgresql.conf"), "a") as f:
        f.write(
            "listen_addresses = '127.0.0.1'\nwal_level = replica\nmax_wal_senders = 5\nhot_standby = on\n"
            "max_connections = 200\nfsync = off\nsynchronous_commit = off\nshared_buffers = 64MB\n"
            "log_min_messages = warning\n"
        )
    with open(os.path.join(data1, "pg_hba.conf"), "w") as f:
        f.write(
            "local all all trust\nhost all all 127.0.0.1/32 trust\nhost replication all 127.0.0.1/32 trust\n"
        )
    primary = Postgres("primary", data1, free_port(), sockdir)
    primary.start()
    sql = [
        "CREATE ROLE tenantwatch LOGIN IN ROLE pg_monitor;",
        "CREATE ROLE app LOGIN;",
        "GRANT CREATE ON DATABASE postgres TO app;",
        "CREATE DATABASE app OWNER app;",
    ]
    psql(primary.port, "postgres", "\n".join(sql))
    body = ["SET ROLE app;"]
    for s in schemas:
        body.append(
            f"CREATE SCHEMA tenant_{s}; CREATE TABLE tenant_{s}.t(id int PRIMARY KEY, v int);"
            f"INSERT INTO tenant_{s}.t SELECT g, 0 FROM generate_series(1, 50) g;"
        )
    psql(primary.port, "app", "\n".join(body))
    psql(
        primary.port,
        "postgres",
        "\n".join(f"CREATE DATABASE tenantdb_{d} OWNER app;" for d in databases),
    )
    for d in databases:
        psql(
            primary.port,
            f"tenantdb_{d}",
            "SET ROLE app; CREATE TABLE t(id int PRIMARY KEY, v int);"
            "INSERT INTO t SELECT g, 0 FROM generate_series(1, 20) g;",
        )
    data2 = os.path.join(run_dir, "pg-standby")
    subprocess.run(
        as_pg(
            [
                "pg_basebackup",
                "-h",
                "127.0.0.1",
                "-p",
                str(primary.port),
                "-U",
                "postgres",
                "-D",
                data2,
                "-R",
                "-X",
                "stream",
                "-c",
                "fast",
            ]
        ),
        check=True,
        stdout=subprocess.DEVNULL,
    )
    standby = Postgres("standby", data2, free_port(), sockdir)
    standby.start()
    return primary, standby


class Process:
    """A child process we start, signal and restart by its own pid."""

    def __init__(self, name, argv, log, user_pg=False, env=None):
        self.name, self.argv, self.log, self.user_pg, self.env = name, argv, log, user_pg, env
        self.proc = None
        self.exits = []  # (time, returncode) of every exit we saw

    def start(self):
        argv = as_pg(self.argv) if self.user_pg else self.argv
        with open(self.log, "ab") as out:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, env=self.env, start_new_session=True
            )

    def pid(self):
        return self.proc.pid if self.proc else None

    def signal(self, sig):
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig) if self.user_pg else self.proc.send_signal(sig)

    def wait(self, timeout):
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        self.exits.append((time.time(), code))
        return code

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout=15):
        if self.alive():
            self.signal(signal.SIGTERM)
            if self.wait(timeout) is None:
                self.signal(signal.SIGKILL)
                self.wait(5)


class PgBouncer(Process):
    def __init__(self, run_dir, pg_port):
        self.port = free_port()
        self.dir = os.path.join(run_dir, "pgbouncer")
        os.makedirs(self.dir, exist_ok=True)
        chown_pg(self.dir)
        self.ini = os.path.join(self.dir, "pgbouncer.ini")
        self.pg_port = pg_port
        self.write_ini(refuse_stats=False)
        super().__init__(
            "pgbouncer",
            [need("pgbouncer", "pgbouncer"), self.ini],
            os.path.join(run_dir, "pgbouncer.log"),
            user_pg=True,
        )

    def write_ini(self, refuse_stats):
        users = os.path.join(self.dir, "users.txt")
        with open(users, "w") as f:
            f.write('"postgres" ""\n"tenantwatch" ""\n"app" ""\n')
        # Refusing the admin console: tenantwatch is no longer a stats user.
        stats = "nobody" if refuse_stats else "tenantwatch"
        with open(self.ini, "w") as f:
            f.write(
                f"[databases]\n* = host=127.0.0.1 port={self.pg_port}\n\n[pgbouncer]\n"
                f"listen_addr = 127.0.0.1\nlisten_port = {self.port}\nunix_socket_dir =\n"
                f"auth_type = trust\nauth_file = {users}\nadmin_users = postgres\nstats_users = {stats}\n"
                "pool_mode = transaction\ndefault_pool_size = 30\nmax_client_conn = 400\n"
                f"pidfile = {self.dir}/pgbouncer.pid\n"
            )
        chown_pg(users)
        chown_pg(self.ini)

    def admin(self, command):
        return psql(self.port, "pgbouncer", command + ";", check=False, timeout=30)

    def ready(self):
        return self.admin("SHOW VERSION").returncode == 0


class Redis(Process):
    def __init__(self, run_dir):
        self.port = free_port()
        super().__init__(
            "redis",
            [
                need("redis-server", "redis-server"),
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                run_dir,
            ],
            os.path.join(run_dir, "redis.log"),
        )

    def ready(self):
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False


class Daemon(Process):
    """One tenantwatch daemon: `tenantwatch run --config FILE`."""

    def __init__(self, binary, run_dir, name, config_text):
        self.http_port, self.udp_port = free_port(), free_udp_port()
        self.config = os.path.join(run_dir, f"{name}.toml")
        self.state = os.path.join(run_dir, f"{name}.state.json")
        self.good_config = config_text(self)
        with open(self.config, "w") as f:
            f.write(self.good_config)
        env = dict(os.environ, TENANTWATCH_LOG="info")
        super().__init__(
            name,
            [binary, "run", "--config", self.config],
            os.path.join(run_dir, f"{name}.log"),
            env=env,
        )

    def url(self, path):
        return f"http://127.0.0.1:{self.http_port}{path}"


class Prometheus(Process):
    def __init__(self, run_dir, daemons, rules, interval):
        self.port = free_port()
        cfg = os.path.join(run_dir, "prometheus.yml")
        targets = ", ".join(f"'127.0.0.1:{d.http_port}'" for d in daemons)
        with open(cfg, "w") as f:
            f.write(
                f"global:\n  scrape_interval: {interval}s\n  evaluation_interval: {interval}s\n"
                f"rule_files: ['{rules}']\nscrape_configs:\n"
                f"  - job_name: tenantwatch\n    static_configs: [{{targets: [{targets}]}}]\n"
                f"  - job_name: prometheus\n    static_configs: [{{targets: ['127.0.0.1:{self.port}']}}]\n"
            )
        super().__init__(
            "prometheus",
            [
                need("prometheus", "prometheus"),
                f"--config.file={cfg}",
                f"--storage.tsdb.path={run_dir}/prometheus-data",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            os.path.join(run_dir, "prometheus.log"),
        )
