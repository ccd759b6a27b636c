"""A local coordinator: real ``redis-server`` processes on loopback formed into a cluster.

``cogs cluster up`` starts the nodes with the shared config (``cogs/redis.conf`` and
the node parameters of cogs/deployment.py, also used by compose.yaml and the lab),
forms the cluster (:func:`form_cluster`, also what the compose init service and the
lab run through ``cogs cluster create``), waits for ``cluster_state:ok`` and loads
the Lua library on every primary.

A locked cluster (``cogs acl apply --admin-password A --cluster-dir DIR``) has the
admin credentials in ``DIR/auth.conf`` (cogs/adminauth.py): every node started from
DIR includes that file (``masteruser``/``masterauth``: replicas sync after a
restart), and every command on DIR authenticates with it.
"""

from __future__ import annotations

import functools
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from cogs import adminauth
from cogs.deployment import BUS_OFFSET, CONFIG_PATH, Deployment
from cogs.errors import ClusterError, ConfigError
from cogs.keys import SLOTS
from cogs.ports import port_busy
from cogs.settings import DEFAULT_PORT
from cogs.tls import TlsFiles, self_signed

if TYPE_CHECKING:
    from cogs.scale import ScaleReport

PERSISTENCE = ("aof", "none")
ACL_FILE = "users.acl"  # the shared config's aclfile, in each node's --dir
INSTALL_HINT = (
    "redis-server is not installed: on Debian/Ubuntu run `sudo apt-get install -y redis-server` "
    "(the README's setup command does it for you), or put redis-server 7+ on PATH"
)
Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


@dataclass(frozen=True)
class NodeStatus:
    port: int
    running: bool
    role: str = "-"
    slots: int = 0
    keys: int = 0
    memory: str = "-"
    state: str = "-"
    error: str = ""


def redis_server() -> str:
    exe = shutil.which("redis-server")
    if exe is None:
        raise ClusterError(INSTALL_HINT)
    return exe


def _client(host: str, port: int, **kw: Any) -> redis.Redis:
    # no client-side retries: the launcher polls on its own, and a retried SHUTDOWN
    # would spend seconds reconnecting to a node that is gone
    return redis.Redis(
        host=host, port=port, socket_timeout=5, socket_connect_timeout=2,
        retry=Retry(NoBackoff(), 0), **kw,
    )  # fmt: skip


def _wait(what: str, test: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if test():
                return
        except redis.AuthenticationError:
            raise  # locked, and not given (the right) credentials: waiting will not help
        except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError):
            pass
        if time.monotonic() > deadline:
            raise ClusterError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.05)


def form_cluster(
    addrs: Sequence[tuple[str, int]],
    replicas: int = 0,
    *,
    timeout: float = 30.0,
    progress: Progress = _quiet,
    client_kw: dict[str, Any] | None = None,
) -> None:
    """Make a cluster of empty nodes: the first ``len/(1+replicas)`` become primaries
    splitting the slots evenly, the rest replicate them in turn. Idempotent: a formed
    cluster is left alone."""
    kw = client_kw or {}
    clients = [_client(h, p, **kw) for h, p in addrs]
    try:
        n_masters, rem = divmod(len(addrs), 1 + replicas)
        if rem or n_masters < 1:
            raise ClusterError(f"{len(addrs)} nodes cannot make primaries with {replicas} replica(s) each")
        _wait("the nodes to answer", lambda: all(c.ping() for c in clients), timeout)
        if any(_known(c) > 1 for c in clients):
            # a restart: the nodes know their cluster from nodes.conf; roles may have
            # moved (a failover), so only wait for it to settle
            progress("nodes already form a cluster: waiting for it to settle")
            _wait("cluster_state:ok on every node", lambda: _cluster_ok(clients, len(addrs)), timeout)
            return
        masters, slaves = clients[:n_masters], clients[n_masters:]
        for i, c in enumerate(masters):
            a, b = i * SLOTS // n_masters, (i + 1) * SLOTS // n_masters - 1
            if not _my_slots(c):
                c.execute_command("CLUSTER", "ADDSLOTSRANGE", a, b)
        progress(f"assigned {SLOTS} slots to {n_masters} primaries")
        host0, port0 = addrs[0]
        ip0 = _ipv4(host0)  # CLUSTER MEET takes an address; compose and the lab name their nodes
        for c in clients[1:]:
            c.execute_command("CLUSTER", "MEET", ip0, port0)
        _wait(
            "all nodes to meet",
            lambda: all(_known(c) >= len(addrs) for c in clients),
            timeout,
        )
        ids = [c.execute_command("CLUSTER", "MYID") for c in masters]
        for j, c in enumerate(slaves):
            target = ids[j % n_masters]
            target = target.decode() if isinstance(target, bytes) else target
            _wait("replica to see its primary", functools.partial(_knows, c, target), timeout)
            c.execute_command("CLUSTER", "REPLICATE", target)
        if slaves:
            progress(f"attached {len(slaves)} replica(s)")
        _wait("cluster_state:ok on every node", lambda: _cluster_ok(clients, len(addrs)), timeout)
        if slaves:
            _wait(
                "replicas to sync",
                lambda: all(c.info("replication").get("master_link_status") == "up" for c in slaves),
                timeout,
            )
        progress("cluster_state:ok")
    except redis.AuthenticationError as e:
        raise ClusterError(
            f"forming the cluster of {len(addrs)} nodes failed: a node refused cogs ({adminauth.describe(e)}): "
            "the nodes are locked; give the admin's credentials (COGS_USERNAME/COGS_PASSWORD or COGS_AUTH_FILE)"
        ) from e
    except redis.RedisError as e:
        raise ClusterError(f"forming the cluster of {len(addrs)} nodes failed: {e}") from e
    finally:
        for c in clients:
            c.close()


def _ipv4(host: str) -> str:
    try:
        return str(socket.getaddrinfo(host, None, socket.AF_INET, socket.SOCK_STREAM)[0][4][0])
    except OSError as e:
        raise ClusterError(f"cannot resolve node {host!r}: {e}") from e


def _ping_strict(host: str, port: int, **kw: Any) -> None:
    with _client(host, port, **kw) as c:
        c.ping()


def _ping(host: str, port: int, **kw: Any) -> bool:
    """The node answers: PONG, or NOAUTH from a locked node (it is up)."""
    try:
        with _client(host, port, **kw) as c:
            return bool(c.ping())
    except redis.AuthenticationError:
        return True


def _info(c: redis.Redis) -> dict[str, str]:
    raw = c.execute_command("CLUSTER", "INFO")
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    return dict(line.split(":", 1) for line in text.split() if ":" in line)


def _known(c: redis.Redis) -> int:
    return int(_info(c)["cluster_known_nodes"])


def _knows(c: redis.Redis, node_id: str) -> bool:
    raw = c.execute_command("CLUSTER", "NODES")
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    return node_id in text


def _cluster_ok(clients: Sequence[redis.Redis], n: int) -> bool:
    for c in clients:
        info = _info(c)
        if info["cluster_state"] != "ok" or int(info["cluster_known_nodes"]) < n:
            return False
        if int(info["cluster_slots_assigned"]) != SLOTS:
            return False
    return True


@dataclass
class LocalCluster:
    """Redis nodes on 127.0.0.1 ports ``port .. port+N-1`` with data under ``dir``."""

    port: int = DEFAULT_PORT
    masters: int = 3
    replicas: int = 0
    dir: Path | None = None
    host: str = "127.0.0.1"
    extra_args: tuple[str, ...] = ()
    #: serve TLS only (clients, replication, cluster bus) with a self-signed CA in dir/tls
    tls: bool = False
    #: "aof": the shared config's AOF (fsync every second); "none": states live in memory
    #: only (and in replicas): no AOF append per write
    persistence: str = "aof"
    _meta: dict[str, Any] = field(default_factory=dict, repr=False)
    #: the ports, bus ports and command-line parameters, shared with compose and the lab
    deployment: Deployment = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.dir is None:
            self.dir = Path(".cogs") / f"cluster-{self.port}"
        self.dir = Path(self.dir).resolve()
        if self.persistence not in PERSISTENCE:
            raise ClusterError(f"unknown persistence {self.persistence!r} (have: {', '.join(PERSISTENCE)})")
        try:
            self.deployment = Deployment(self.masters, self.replicas, self.port)
        except ConfigError as e:
            raise ClusterError(str(e)) from e

    @property
    def size(self) -> int:
        return self.deployment.size

    @property
    def ports(self) -> list[int]:
        return [n.port for n in self.deployment.nodes]

    @property
    def url(self) -> str:
        return f"{'rediss' if self.tls else 'redis'}://{self.host}:{self.port}"

    @property
    def tls_files(self) -> TlsFiles | None:
        assert self.dir is not None
        return self_signed(self.dir / "tls") if self.tls else None

    def tls_kwargs(self) -> dict[str, Any]:
        files = self.tls_files
        return files.client_kwargs() if files else {}

    @property
    def auth_file(self) -> Path:
        """Where a locked cluster keeps its admin credentials (cogs/adminauth.py)."""
        assert self.dir is not None
        return adminauth.path_in(self.dir)

    def admin(self) -> adminauth.AdminAuth | None:
        """The admin credentials of auth.conf; None: the cluster is not locked."""
        return adminauth.read_dir(self.dir)

    def client_kwargs(self) -> dict[str, Any]:
        """TLS and, for a locked cluster, the admin's credentials (auth.conf)."""
        admin = self.admin()
        return {**self.tls_kwargs(), **(admin.client_kw() if admin else {})}

    def refused(self, port: int, e: object) -> ClusterError:
        """NOAUTH / WRONGPASS from node ``port``, as an error naming auth.conf."""
        return ClusterError(f"node {self.host}:{port}: {adminauth.refused(self.auth_file, e)}")

    def node_dir(self, port: int) -> Path:
        assert self.dir is not None
        return self.dir / str(port)

    def _pid(self, port: int) -> int | None:
        try:
            pid = int((self.node_dir(port) / "redis.pid").read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if _alive(pid) else None

    # -- lifecycle ---------------------------------------------------------------------

    def start_node(self, port: int) -> bool:
        """Start the node on ``port``; False if it was running already."""
        d = self.node_dir(port)
        d.mkdir(parents=True, exist_ok=True)
        if self._pid(port):
            return False
        (d / ACL_FILE).touch()  # the config's aclfile: must exist (empty: no users yet)
        files = self.tls_files
        node = self.deployment.node_at(port - self.port)
        cmd = [
            redis_server(), str(CONFIG_PATH),
            *Deployment.node_args(node, announce_ip=self.host, bind=self.host, data_dir=str(d), tls=files is not None),
            *(files.server_args() if files else ()),
            "--daemonize", "yes", "--pidfile", str(d / "redis.pid"), "--logfile", str(d / "redis.log"),
            *(("--appendonly", "no") if self.persistence == "none" else ()),
            # a locked cluster's masteruser/masterauth (a path, not the password: argv is public)
            *(("--include", str(self.auth_file)) if self.auth_file.exists() else ()), *self.extra_args,
        ]  # fmt: skip
        r = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if r.returncode != 0:
            raise ClusterError(f"redis-server on port {port} failed to start: {(r.stderr or r.stdout).strip()}")
        try:
            _wait(f"redis-server on port {port}", functools.partial(_ping, self.host, port, **self.tls_kwargs()), 10)
        except ClusterError as e:
            log = (d / "redis.log").read_text()[-800:] if (d / "redis.log").exists() else ""
            raise ClusterError(f"{e}; log tail:\n{log}") from e
        return True

    def up(self, *, progress: Progress = _quiet, timeout: float = 60.0) -> str:
        """Start (or resume) the nodes and form the cluster; returns the seed URL."""
        assert self.dir is not None
        redis_server()
        busy = [p for p in self.ports if not self._pid(p) and port_busy(self.host, p)]
        if busy:
            raise ClusterError(f"port(s) {busy} already in use by another process; pick another --port")
        self._save_meta(self.deployment)
        started = sum(self.start_node(p) for p in self.ports)
        running = f" ({self.size - started} already running)" if started < self.size else ""
        progress(f"started {started} redis-server node(s) on ports {self.ports[0]}-{self.ports[-1]}{running}")
        try:
            form_cluster(
                [(self.host, p) for p in self.ports], self.replicas, timeout=timeout, progress=progress,
                client_kw=self.client_kwargs(),
            )  # fmt: skip
        except ClusterError as e:
            if isinstance(e.__cause__, redis.AuthenticationError):
                raise self.refused(self.port, e.__cause__) from e
            raise
        return self.url

    def _save_meta(self, d: Deployment) -> None:
        assert self.dir is not None
        self.dir.mkdir(parents=True, exist_ok=True)
        meta = {
            "port": self.port, "masters": d.masters, "replicas": d.replicas, "host": self.host, "tls": self.tls,
            "persistence": self.persistence,
        }  # fmt: skip
        (self.dir / "cluster.json").write_text(json.dumps(meta))

    def scale(
        self, masters: int, replicas: int | None = None, *, progress: Progress = _quiet, timeout: float = 60.0,
        client_kw: dict[str, Any] | None = None,
    ) -> ScaleReport:  # fmt: skip
        """Grow or shrink the running cluster to ``masters`` primaries with ``replicas``
        replicas each (default: as now), moving slots while clients keep working
        (cogs/scale.py). ``client_kw``: an admin's credentials, for a locked cluster
        whose dir has no auth.conf (auth.conf's win)."""
        from cogs.reshard import Admin
        from cogs.scale import Scaler

        try:
            target = Deployment(masters, self.replicas if replicas is None else replicas, self.port)
        except ConfigError as e:
            raise ClusterError(str(e)) from e
        if not self._pid(self.port):
            raise ClusterError(f"no node runs on port {self.port}: start the cluster first (`cogs cluster up`)")
        kw = {**self.tls_kwargs(), **(client_kw or {}), **self.client_kwargs()}
        try:  # credentials first: a refused scale leaves cluster.json as it was
            _ping_strict(self.host, self.port, **kw)
        except redis.AuthenticationError as e:
            raise self.refused(self.port, e) from e
        before = self.deployment
        if target.size > before.size:  # what `down` stops covers the new nodes from the start
            self._save_meta(target)
        admin = Admin(kw)
        try:
            report = Scaler(_LocalHosts(self), admin, progress=progress, timeout=timeout).scale(target)
        except ClusterError as e:
            if isinstance(e.__cause__, redis.AuthenticationError):
                raise self.refused(self.port, e.__cause__) from e
            raise
        finally:
            admin.close()
        self.masters, self.replicas, self.deployment = target.masters, target.replicas, target
        self._save_meta(target)
        return report

    def stop_node(self, port: int, *, hard: bool = False) -> None:
        """Stop one node: SHUTDOWN (AOF flushed), or SIGKILL with ``hard`` (a crash)."""
        pid = self._pid(port)
        if pid is None:
            return
        if hard:
            os.kill(pid, signal.SIGKILL)
        else:
            try:
                with _client(self.host, port, **self.client_kwargs()) as c:
                    c.execute_command("SHUTDOWN")
            except redis.AuthenticationError:  # locked, auth.conf lost: SIGTERM is a SHUTDOWN too
                os.kill(pid, signal.SIGTERM)
            except (redis.ConnectionError, redis.ResponseError):
                pass
        # Redis removes its pidfile just before exiting: also wait for the port to close
        deadline = time.monotonic() + 10
        while (_alive(pid) or port_busy(self.host, port)) and time.monotonic() < deadline:
            time.sleep(0.02)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)

    # -- the keeper (cogs/keeper.py): counts usage for the NFs' max_keys/max_memory ----------

    @property
    def keeper_pidfile(self) -> Path:
        assert self.dir is not None
        return self.dir / "keeper.pid"

    def keeper_pid(self) -> int | None:
        """The running keeper of this dir (a pidfile whose process runs ``cogs keeper`` on it)."""
        try:
            pid = int(self.keeper_pidfile.read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            return None
        return pid if b"keeper" in cmdline and str(self.dir).encode() in cmdline and _alive(pid) else None

    def start_keeper(self, interval: float = 2.0) -> bool:
        """Run ``cogs keeper`` on this cluster in the background (log: DIR/keeper.log);
        False if one runs already. ``down`` stops it."""
        assert self.dir is not None
        if self.keeper_pid():
            return False
        argv = [sys.executable, "-m", "cogs.cli", "keeper", "--cluster-dir", str(self.dir), "--interval", str(interval)]
        # started by a shell that exits at once: the keeper is nobody's child (init reaps it)
        script = f"{shlex.join(argv)} </dev/null >>{shlex.quote(str(self.dir / 'keeper.log'))} 2>&1 & echo $!"
        r = subprocess.run(["setsid", "sh", "-c", script], capture_output=True, text=True, check=False)
        if r.returncode != 0 or not r.stdout.strip().isdigit():
            raise ClusterError(f"could not start the keeper: {(r.stderr or r.stdout).strip()}")
        self.keeper_pidfile.write_text(r.stdout)
        return True

    def stop_keeper(self) -> None:
        pid = self.keeper_pid()
        if pid is not None:
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 10
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.02)
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        self.keeper_pidfile.unlink(missing_ok=True)

    def down(self, *, purge: bool = False) -> None:
        """Stop every node of the dir: the deployment's, and any other with a pidfile
        there (one a scale started, when this object was made before it grew); and its keeper."""
        self.stop_keeper()
        others = sorted(
            int(d.name) for d in (self.dir.iterdir() if self.dir is not None and self.dir.is_dir() else ())
            if d.name.isdigit() and int(d.name) not in self.ports and (d / "redis.pid").exists()
        )  # fmt: skip
        for p in [*self.ports, *others]:
            self.stop_node(p)
        if purge and self.dir is not None and self.dir.exists():
            shutil.rmtree(self.dir)

    def status(self) -> list[NodeStatus]:
        out = []
        for p in self.ports:
            if not self._pid(p):
                out.append(NodeStatus(p, False))
                continue
            try:
                with _client(self.host, p, **self.client_kwargs()) as c:
                    info, cinfo, keys = c.info(), _info(c), int(c.dbsize())
                    slots = sum(b - a + 1 for a, b in _my_slots(c))
                out.append(
                    NodeStatus(
                        p,
                        True,
                        role=str(info.get("role", "?")),
                        slots=slots,
                        keys=keys,
                        memory=str(info.get("used_memory_human", "?")),
                        state=cinfo.get("cluster_state", "?"),
                    )
                )
            except redis.AuthenticationError as e:
                out.append(NodeStatus(p, True, error=adminauth.describe(e)))  # the CLI says why once
            except (redis.ConnectionError, redis.ResponseError, redis.TimeoutError) as e:
                out.append(NodeStatus(p, True, error=str(e)))
        return out

    @staticmethod
    def port_of(port: int | None, dir: Path | None) -> int:
        """The first node's port: ``port`` if given, else the one ``dir``'s cluster was
        started with (its cluster.json), else the default. A ``port`` other than the
        one recorded is refused: stopping or scaling nodes that are not there is no
        way to find out a typo."""
        recorded = None
        if dir is not None and (Path(dir) / "cluster.json").exists():
            try:
                recorded = int(json.loads((Path(dir) / "cluster.json").read_text())["port"])
            except (OSError, ValueError, KeyError, TypeError) as e:
                raise ClusterError(f"{dir}/cluster.json is unreadable: {e}") from e
        if port is not None and recorded is not None and port != recorded:
            raise ClusterError(f"the cluster in {dir} was started with --port {recorded}, not {port}")
        return port if port is not None else recorded if recorded is not None else DEFAULT_PORT

    @classmethod
    def from_dir(cls, port: int, dir: Path | None = None) -> LocalCluster:
        """The cluster started earlier with this port/dir (reads its cluster.json)."""
        probe = cls(port=port, dir=dir)
        assert probe.dir is not None
        meta = probe.dir / "cluster.json"
        if not meta.exists():
            return probe
        m = json.loads(meta.read_text())
        return cls(
            port=port,
            masters=m["masters"],
            replicas=m["replicas"],
            dir=probe.dir,
            host=m["host"],
            tls=m.get("tls", False),
            persistence=m.get("persistence", "aof"),
        )


class _LocalHosts:
    """Where cogs/scale.py finds, starts and removes a local cluster's nodes."""

    def __init__(self, lc: LocalCluster) -> None:
        self.lc = lc

    def addr(self, i: int) -> tuple[str, int]:
        return (self.lc.host, self.lc.port + i)

    def start(self, i: int, acl: str) -> None:
        port = self.lc.port + i
        self.lc.stop_node(port)  # one started by a run cut off before it joined
        shutil.rmtree(self.lc.node_dir(port), ignore_errors=True)
        if port_busy(self.lc.host, port) or port_busy(self.lc.host, port + BUS_OFFSET):
            raise ClusterError(f"port {port} (or its bus port) is taken by another process: cannot add node{i + 1}")
        write_acl(self.lc.node_dir(port), acl)
        self.lc.start_node(port)

    def remove(self, i: int) -> None:
        port = self.lc.port + i
        self.lc.stop_node(port)
        shutil.rmtree(self.lc.node_dir(port), ignore_errors=True)


def write_acl(node_dir: Path, acl: str) -> None:
    """A new node's aclfile before it starts: it opens its port with the cluster's users
    (a locked cluster's default password too), never with an open default user."""
    node_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(node_dir / ACL_FILE, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(acl)


def _my_slots(c: redis.Redis) -> list[tuple[int, int]]:
    myid = c.execute_command("CLUSTER", "MYID")
    myid = myid.decode() if isinstance(myid, bytes) else myid
    out = []
    for entry in c.execute_command("CLUSTER", "SLOTS"):
        nid = entry[2][2]
        if (nid.decode() if isinstance(nid, bytes) else nid) == myid:
            out.append((int(entry[0]), int(entry[1])))
    return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    try:  # a zombie (exited, not yet reaped) counts as gone
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][:1] != "Z"
    except OSError:
        return True
