"""Real PostgreSQL infrastructure on loopback ports, in temporary directories, never as a
service: PgBouncer in front of a server, and a Patroni cluster (etcd, a primary, a
synchronous standby). Used by tests/test_pgbouncer.py and `make soak` (soak/failover.py).

PostgreSQL, Patroni and PgBouncer refuse to run as root; when the suite runs as root (CI
does), they run as the `postgres` user, in directories handed to it. The server of
CADUCEE_TEST_PG is never touched: everything here has ports and directories of its own.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

PG_BIN = next((p for p in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True) if (p / "postgres").exists()), None)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def missing_tools(*tools: str) -> list[str]:
    return [tool for tool in tools if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists()]


def _as_service_user() -> dict[str, object]:
    """Popen arguments that drop root to `postgres` (nothing to do for an ordinary user)."""
    if os.getuid() != 0:
        return {}
    user = pwd.getpwnam("postgres")
    return {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}


def hand_over(directory: Path) -> Path:
    """A directory the service user owns (mode 0700, as PostgreSQL wants its data directory)."""
    directory.mkdir(parents=True, exist_ok=True)
    if os.getuid() == 0:
        user = pwd.getpwnam("postgres")
        for path in [directory, *directory.parents]:
            if path == Path("/") or path == Path("/tmp"):
                break
            os.chmod(path, os.stat(path).st_mode | 0o711)  # the service user must traverse the test's directories
        os.chown(directory, user.pw_uid, user.pw_gid)
    os.chmod(directory, 0o700)
    return directory


def _write(path: Path, content: str) -> Path:
    path.write_text(content, encoding="utf-8")
    if os.getuid() == 0:
        user = pwd.getpwnam("postgres")
        os.chown(path, user.pw_uid, user.pw_gid)
    return path


def _wait(what: str, ready, timeout: float, process: subprocess.Popen[bytes] | None = None, log: Path | None = None) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{what} stopped ({process.returncode}): {log.read_text(errors='replace')[-3000:] if log else ''}")
        time.sleep(0.2)
    raise RuntimeError(f"{what} not ready after {timeout:.0f} s: {log.read_text(errors='replace')[-3000:] if log and log.exists() else ''}")


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def stop(process: subprocess.Popen[bytes] | None, *, sig: int = signal.SIGTERM, timeout: float = 30) -> None:
    if process is None or process.poll() is not None:
        return
    process.send_signal(sig)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@dataclass
class PgBouncer:
    """PgBouncer on a free loopback port in front of `host:port`, session pooling, trust auth."""

    directory: Path
    host: str
    port: int
    pool_size: int = 60
    listen: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> PgBouncer:
        directory = hand_over(self.directory)
        _write(directory / "userlist.txt", '"postgres" ""\n')
        ini = _write(
            directory / "pgbouncer.ini",
            f"""[databases]
* = host={self.host} port={self.port}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {self.listen}
unix_socket_dir =
auth_type = trust
auth_file = {directory / "userlist.txt"}
admin_users = postgres
pool_mode = session
max_client_conn = 500
default_pool_size = {self.pool_size}
ignore_startup_parameters = extra_float_digits
logfile = {directory / "pgbouncer.log"}
pidfile = {directory / "pgbouncer.pid"}
""",
        )
        binary = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
        self.process = subprocess.Popen([binary, str(ini)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, **_as_service_user())  # type: ignore[call-overload]
        _wait("pgbouncer", lambda: _listening(self.listen), 30, self.process, directory / "pgbouncer.log")
        return self

    def show(self, what: str) -> str:
        """The admin console's SHOW <what> (psql: the console speaks the simple protocol only)."""
        command = ["psql", "-h", "127.0.0.1", "-p", str(self.listen), "-U", "postgres", "-At", "-F", "|", "pgbouncer", "-c", f"SHOW {what}"]
        return subprocess.run(command, capture_output=True, text=True, check=True, timeout=30).stdout

    def stop(self) -> None:
        stop(self.process)


@dataclass
class Etcd:
    directory: Path
    client: int = field(default_factory=free_port)
    peer: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> Etcd:
        directory = hand_over(self.directory)
        log = directory / "etcd.log"
        command = [
            "etcd",
            "--name=soak",
            f"--data-dir={directory / 'data'}",
            f"--listen-client-urls=http://127.0.0.1:{self.client}",
            f"--advertise-client-urls=http://127.0.0.1:{self.client}",
            f"--listen-peer-urls=http://127.0.0.1:{self.peer}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{self.peer}",
            f"--initial-cluster=soak=http://127.0.0.1:{self.peer}",
            "--enable-v2=true",
        ]
        with open(log, "wb") as output:
            self.process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, **_as_service_user())  # type: ignore[call-overload]
        _wait("etcd", lambda: _http_ok(f"http://127.0.0.1:{self.client}/health"), 30, self.process, log)
        return self

    def stop(self) -> None:
        stop(self.process)


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as answer:
            return 200 <= answer.status < 300
    except OSError:
        return False


def _http_json(url: str) -> dict[str, object] | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as answer:
            return json.loads(answer.read())  # type: ignore[no-any-return]
    except (OSError, ValueError):
        return None
    except Exception:  # noqa: BLE001 - urllib raises HTTPError (an OSError) for 503, which Patroni answers on a replica
        return None


@dataclass
class PatroniNode:
    name: str
    directory: Path
    pg_port: int = field(default_factory=free_port)
    api_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def log(self) -> Path:
        return self.directory / "patroni.log"

    def status(self) -> dict[str, object] | None:
        """Patroni's REST API: role, state, and the like (None when it does not answer)."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.api_port}/patroni", timeout=2) as answer:
                return json.loads(answer.read())  # type: ignore[no-any-return]
        except urllib.error.HTTPError as error:  # 503 from a replica still carries the document
            try:
                return json.loads(error.read())  # type: ignore[no-any-return]
            except ValueError:
                return None
        except (OSError, ValueError):
            return None

    def role(self) -> str:
        status = self.status() or {}
        return str(status.get("role", "")) if status.get("state") == "running" else ""


@dataclass
class PatroniCluster:
    """etcd, then Patroni nodes on loopback ports: the first bootstraps and leads, the others
    follow; `synchronous_mode` makes a commit wait for the synchronous standby."""

    directory: Path
    size: int = 2
    ttl: int = 20
    scope: str = "caducee-soak"
    etcd: Etcd | None = None
    nodes: list[PatroniNode] = field(default_factory=list)

    def start(self, timeout: float = 180) -> PatroniCluster:
        if PG_BIN is None:
            raise RuntimeError("no PostgreSQL server binaries under /usr/lib/postgresql")
        self.etcd = Etcd(self.directory / "etcd").start()
        self.nodes = [PatroniNode(f"pg{n}", hand_over(self.directory / f"pg{n}")) for n in range(1, self.size + 1)]
        first = self.nodes[0]
        self._launch(first)  # the first bootstraps the cluster alone, then the others join
        _wait("the first Patroni node", lambda: first.role() in {"master", "primary"}, timeout, first.process, first.log)
        for node in self.nodes[1:]:
            self._launch(node)
        _wait("the standbys", lambda: all(n.role() in {"replica", "sync_standby"} for n in self.nodes[1:]), timeout)
        _wait("a synchronous standby", lambda: self.sync_standby() is not None, timeout)
        return self

    def _launch(self, node: PatroniNode) -> None:
        config = {
            "scope": self.scope,
            "name": node.name,
            "log": {"level": "WARNING"},
            "restapi": {"listen": f"127.0.0.1:{node.api_port}", "connect_address": f"127.0.0.1:{node.api_port}"},
            "etcd3": {"hosts": [f"127.0.0.1:{self.etcd.client}"]},  # type: ignore[union-attr]
            "bootstrap": {
                "dcs": {
                    "ttl": self.ttl,
                    "loop_wait": 2,
                    "retry_timeout": 5,
                    "maximum_lag_on_failover": 16 * 1024 * 1024,
                    "synchronous_mode": True,
                    "postgresql": {
                        "use_pg_rewind": True,
                        "parameters": {"max_connections": 200, "wal_log_hints": "on", "max_wal_senders": 5, "max_replication_slots": 5},
                    },
                },
                "initdb": [{"encoding": "UTF8"}, {"locale": "C"}],
                "pg_hba": ["host replication replicator 127.0.0.1/32 trust", "host all all 127.0.0.1/32 trust", "local all all trust"],
            },
            "postgresql": {
                "listen": f"127.0.0.1:{node.pg_port}",
                "connect_address": f"127.0.0.1:{node.pg_port}",
                "data_dir": str(node.directory / "data"),
                "bin_dir": str(PG_BIN),
                "pgpass": str(node.directory / "pgpass"),
                "authentication": {
                    "replication": {"username": "replicator", "password": "replicator"},
                    "superuser": {"username": "postgres", "password": "postgres"},
                },
                "parameters": {"unix_socket_directories": str(node.directory), "fsync": "on", "shared_buffers": "64MB"},
            },
        }
        path = _write(node.directory / "patroni.yml", json.dumps(config))  # JSON is YAML
        with open(node.log, "ab") as output:
            node.process = subprocess.Popen(
                ["patroni", str(path)], stdout=output, stderr=subprocess.STDOUT, cwd=node.directory, **_as_service_user()
            )  # type: ignore[call-overload]

    def primary(self) -> PatroniNode | None:
        return next((node for node in self.nodes if node.role() in {"master", "primary"}), None)

    def sync_standby(self) -> PatroniNode | None:
        cluster = _http_json(f"http://127.0.0.1:{self.nodes[0].api_port}/cluster") or _http_json(
            f"http://127.0.0.1:{self.nodes[-1].api_port}/cluster"
        )
        members = cluster.get("members", []) if cluster else []
        names = {str(m.get("name")) for m in members if m.get("role") == "sync_standby" and m.get("state") in {"running", "streaming"}}  # type: ignore[union-attr]
        return next((node for node in self.nodes if node.name in names), None)

    def url(self, database: str = "postgres") -> str:
        """The multi-host URL Caducée is given: every node, the primary found by libpq's rule."""
        hosts = ",".join(f"127.0.0.1:{node.pg_port}" for node in self.nodes)
        return f"postgresql://postgres@{hosts}/{database}?target_session_attrs=read-write"

    def kill(self, node: PatroniNode) -> None:
        """SIGKILL Patroni and its PostgreSQL at once, as a machine that loses power: the
        leader key is left to expire (ttl), then the standby is promoted."""
        postmaster = node.directory / "data" / "postmaster.pid"
        pid = int(postmaster.read_text().split()[0]) if postmaster.exists() else None
        if node.process is not None:
            node.process.kill()
            node.process.wait()
        if pid:
            try:
                os.killpg(os.getpgid(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for child in _children_of_data_dir(node.directory / "data"):
            try:
                os.kill(child, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def stop(self) -> None:
        for node in self.nodes:
            stop(node.process, timeout=60)
        for node in self.nodes:  # a PostgreSQL left by a Patroni that could not stop it
            for pid in _children_of_data_dir(node.directory / "data"):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        if self.etcd is not None:
            self.etcd.stop()


def _children_of_data_dir(data_dir: Path) -> list[int]:
    """PostgreSQL processes serving `data_dir` (their command line names it)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            command = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(data_dir) in command and "postgres" in command and "patroni" not in command:
            found.append(int(proc.name))
    return found
