"""The :class:`Lab`: coordinator nodes and middleboxes as hosts on an emulated LAN."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self, TypeVar

import redis

from cogs import adminauth
from cogs.cluster import ACL_FILE, redis_server
from cogs.deployment import CONFIG_PATH, Deployment, Node
from cogs.lab import netns
from cogs.lab.netns import LabError
from cogs.lab.status import LabStatus, lab_status
from cogs.lab.switch import request
from cogs.lab.units import parse_loss, parse_rate, parse_us

if TYPE_CHECKING:
    pass

T = TypeVar("T")
Progress = Callable[[str], None]
STATE = "lab.json"
NET_PREFIX = 16  # every lab host in 198.18.0.0/16: nodes 198.18.1.i, middleboxes 198.18.2.i
MAX_HOSTS = 250


def _quiet(_: str) -> None:
    pass


@dataclass(frozen=True)
class Host:
    """A lab host: its own network namespace, one interface ``eth0`` at ``addr``."""

    name: str  # node1.., mb1..
    role: str  # "node" | "middlebox"
    addr: str
    mac: str
    netns: str
    link: str  # the lab end of its veth pair (in the lab namespace)


def lab_tag(dir: Path) -> str:
    """6 hex digits of the lab dir's path, in every name the lab makes: labs in
    different dirs never collide, and names stay within IFNAMSIZ (15)."""
    return hashlib.sha256(str(Path(dir).resolve()).encode()).hexdigest()[:6]


def prefix_of(dir: Path) -> str:
    return f"cogs-{lab_tag(dir)}-"


def plan_hosts(dir: Path, nodes: int, middleboxes: int) -> dict[str, Host]:
    tag, pre = lab_tag(dir), prefix_of(dir)
    hosts = {}
    for role, kind, n, octet in (("node", "n", nodes, 1), ("middlebox", "m", middleboxes, 2)):
        for i in range(1, n + 1):
            name = f"{'node' if kind == 'n' else 'mb'}{i}"
            hosts[name] = Host(
                name, role, f"198.18.{octet}.{i}", f"02:c6:12:00:{octet:02x}:{i:02x}", pre + name, f"cl{tag}{kind}{i}"
            )
    return hosts


def teardown(dir: Path) -> dict[str, int]:
    """Remove every namespace, link, process and /etc/netns entry of the lab in ``dir``,
    whatever state it is in (found by name: nothing needs to have been recorded)."""
    netns.require_privileges()
    pre = prefix_of(dir)
    names = netns.namespaces(pre)
    killed = netns.kill_all_in(names)
    for n in names:
        netns.delete_namespace(n)
    stray = netns.etc_leftovers(pre)
    for n in stray:
        netns.delete_namespace(n)
    state = Path(dir) / STATE
    if state.exists():
        data = json.loads(state.read_text())
        data["up"] = False
        state.write_text(json.dumps(data, indent=2))
    return {"namespaces": len(names), "processes": killed}


class Lab:
    """A lab that is up in ``dir`` (make one with :meth:`up`, find it with :meth:`from_dir`)."""

    def __init__(self, dir: Path, state: dict[str, Any]) -> None:
        self.dir = Path(dir).resolve()
        self._state = state
        self.deployment = Deployment(state["masters"], state["replicas"], state["port"])
        self.hosts: dict[str, Host] = {n: Host(**h) for n, h in state["hosts"].items()}
        self.lab_netns: str = state["lab_netns"]

    # -- making and finding ----------------------------------------------------------

    @classmethod
    def up(
        cls,
        dir: str | Path,
        *,
        nodes: int = 6,
        replicas: int = 1,
        middleboxes: int = 1,
        rtt: str | float = "200us",
        jitter: str | float = 0,
        rate: str | float | None = None,
        loss: str | float | None = None,
        catalog: str | Path | None = None,
        progress: Progress = _quiet,
    ) -> Lab:
        """Build the lab in ``dir``: hosts, links (``rtt`` is a node<->middlebox round
        trip: each link gets rtt/4 one way, jitter/4 likewise), Redis nodes announcing
        their lab addresses, the cluster formed by the deployment's init command run
        on node1, with ``catalog`` (default: the bundled one). On failure everything
        made so far is removed."""
        netns.require_privileges()
        exe = redis_server()
        d = Path(dir).resolve()
        deployment = Deployment.of_size(nodes, replicas)
        if not 0 <= middleboxes <= MAX_HOSTS or nodes > MAX_HOSTS:
            raise LabError(f"at most {MAX_HOSTS} nodes and {MAX_HOSTS} middleboxes")
        link = {
            "delay_us": parse_us(rtt, "--rtt") / 4,
            "jitter_us": parse_us(jitter, "--jitter") / 4,
            "rate_bps": parse_rate(rate, "--rate"),
            "loss": parse_loss(loss, "--loss"),
        }
        if netns.namespaces(prefix_of(d)):
            raise LabError(f"a lab is already up in {d}: `cogs lab down --dir {d}` first")
        _clean_dir(d)
        hosts = plan_hosts(d, nodes, middleboxes)
        state: dict[str, Any] = {
            "version": 1, "dir": str(d), "tag": lab_tag(d), "up": True, "ready": False, "up_pid": os.getpid(),
            "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "masters": deployment.masters, "replicas": replicas, "port": deployment.port,
            "lab_netns": prefix_of(d) + "lab", "hosts": {n: asdict(h) for n, h in hosts.items()},
            "links": {n: dict(link) for n in hosts}, "blocked": {},
        }  # fmt: skip
        lab = cls(d, state)
        lab._save()
        try:
            lab._build(progress)
            lab._start_switch(progress)
            for node in deployment.nodes:
                lab._start_node(node, exe)
            progress(f"started {deployment.size} redis-server nodes on {hosts['node1'].addr}..")
            lab._form(catalog, progress)
        except BaseException:
            progress("failed: removing what was made")
            teardown(d)
            raise
        state["ready"] = True
        lab._save()
        return lab

    @classmethod
    def from_dir(cls, dir: str | Path) -> Lab:
        """The lab made earlier in ``dir`` (by this process or another)."""
        netns.require_privileges()  # every use of a lab enters its namespaces
        d = Path(dir).resolve()
        try:
            state = json.loads((d / STATE).read_text())
        except (OSError, ValueError) as e:
            raise LabError(f"no lab in {d} ({e}): make one with `cogs lab up --dir {d}`") from e
        return cls(d, state)

    def down(self) -> dict[str, int]:
        """Remove everything the lab made (idempotent); data and logs stay in ``dir``."""
        return teardown(self.dir)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.down()

    # -- using -----------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The cluster's seed URL, valid inside the lab's hosts (``exec``/``popen``)."""
        n = self.deployment.nodes[0]
        return f"redis://{self.hosts[n.name].addr}:{n.port}"

    def env(self, host: str, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """The environment of a command in ``host``: COGS_URL of the lab cluster,
        COGS_PEER_HOST (a proxy's peer channel listens on the lab network),
        COGS_LAB_HOST (the host's name), this Python's scripts first on PATH."""
        h = self.host(host)
        env = dict(os.environ)
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        env |= {"COGS_URL": self.url, "COGS_PEER_HOST": h.addr, "COGS_LAB_HOST": h.name}
        return env | dict(extra or {})

    def exec(
        self, host: str, argv: Sequence[str], *, env: Mapping[str, str] | None = None, check: bool = False,
        timeout: float | None = None, input: str | None = None, capture: bool = True,
    ) -> subprocess.CompletedProcess[str]:  # fmt: skip
        """Run ``argv`` in ``host``'s namespace and wait (output captured as text)."""
        return subprocess.run(
            self._argv(host, argv), env=self.env(host, env), check=check, timeout=timeout, input=input,
            capture_output=capture, text=True,
        )  # fmt: skip

    def popen(
        self, host: str, argv: Sequence[str], *, env: Mapping[str, str] | None = None, **kw: Any
    ) -> subprocess.Popen[Any]:
        """Start ``argv`` in ``host``'s namespace (``subprocess.Popen`` keywords pass through)."""
        return subprocess.Popen(self._argv(host, argv), env=self.env(host, env), **kw)

    def call(self, host: str, fn: Callable[[], T]) -> T:
        """``fn()`` in this process, on a thread inside ``host``'s namespace: sockets it
        opens (a redis client, a probe) reach the lab and stay there."""
        return netns.call_in(self.host(host).netns, fn)

    def host(self, name: str) -> Host:
        if name not in self.hosts:
            raise LabError(f"no host {name!r} in the lab (hosts: {', '.join(self.hosts)})")
        return self.hosts[name]

    def _argv(self, host: str, argv: Sequence[str]) -> list[str]:
        if not argv:
            raise LabError("no command given")
        return ["ip", "netns", "exec", self.host(host).netns, *argv]

    # -- faults ----------------------------------------------------------------------

    def netem(
        self, host: str, *, delay: str | float | None = None, jitter: str | float | None = None,
        loss: str | float | None = None, rate: str | float | None = None,
    ) -> dict[str, Any]:  # fmt: skip
        """Change ``host``'s link now, both directions: one-way ``delay`` (a round trip
        through this link crosses it twice), ``jitter``, ``loss``, ``rate`` (0: none).
        Parameters left None keep their value. Returns the link's parameters."""
        change: dict[str, Any] = {}
        if delay is not None:
            change["delay_us"] = parse_us(delay, "delay")
        if jitter is not None:
            change["jitter_us"] = parse_us(jitter, "jitter")
        if loss is not None:
            change["loss"] = parse_loss(loss)
        if rate is not None:
            change["rate_bps"] = parse_rate(rate)
        reply = self._switch({"op": "set", "port": self.host(host).name, **change})
        self._state["links"][host] = {k: reply["port"][k] for k in ("delay_us", "jitter_us", "loss", "rate_bps")}
        self._save()
        return dict(self._state["links"][host])

    def partition(self, group_a: Iterable[str], group_b: Iterable[str]) -> None:
        """Hosts of ``group_a`` and ``group_b`` no longer reach each other (nftables in
        each host drops packets to and from the other side); within a group, and
        with other hosts, nothing changes. Partitions add up until :meth:`heal`."""
        a, b = [self.host(h) for h in group_a], [self.host(h) for h in group_b]
        if not a or not b or {h.name for h in a} & {h.name for h in b}:
            raise LabError("a partition needs two non-empty groups of distinct hosts")
        netns.require_tool("nft", "nftables")
        blocked: dict[str, list[str]] = self._state["blocked"]
        for side, other in ((a, b), (b, a)):
            for h in side:
                blocked[h.name] = sorted({*blocked.get(h.name, []), *(o.addr for o in other)})
                self._nft(h, blocked[h.name])
        self._save()

    def heal(self) -> None:
        """Remove every partition."""
        for name in list(self._state["blocked"]):
            self._nft(self.host(name), [])
        self._state["blocked"] = {}
        self._save()

    def _nft(self, h: Host, addrs: list[str]) -> None:
        rules = "table inet cogs_lab {}\ndelete table inet cogs_lab\n"
        if addrs:
            peers = ", ".join(addrs)
            rules += (
                "table inet cogs_lab {\n"
                f"  chain input {{ type filter hook input priority 0; ip saddr {{ {peers} }} drop; }}\n"
                f"  chain output {{ type filter hook output priority 0; ip daddr {{ {peers} }} drop; }}\n"
                "}\n"
            )
        netns.run(["ip", "netns", "exec", h.netns, "nft", "-f", "-"], f"nftables in {h.name}", input=rules)

    def freeze(self, node: str) -> None:
        """SIGSTOP ``node``'s redis-server: it holds its connections and answers nothing."""
        os.kill(self._pid(node, required=True), signal.SIGSTOP)

    def thaw(self, node: str) -> None:
        os.kill(self._pid(node, required=True), signal.SIGCONT)

    def kill(self, node: str) -> None:
        """SIGKILL ``node``'s redis-server (a crash); :meth:`restart` brings it back."""
        pid = self._pid(node, required=True)
        os.kill(pid, signal.SIGKILL)
        _wait(f"{node}'s redis-server to die", lambda: not netns._alive(pid), 10)

    def restart(self, node: str) -> None:
        """(Re)start ``node``'s redis-server on its data dir: same node id (nodes.conf),
        same data (AOF); a running one is stopped first (SIGTERM: AOF flushed)."""
        pid = self._pid(node)
        if pid:
            os.kill(pid, signal.SIGCONT)
            os.kill(pid, signal.SIGTERM)
            _wait(f"{node}'s redis-server to stop", lambda: not netns._alive(pid), 15)
        self._start_node(self.deployment.node(self.host(node).name), redis_server())

    @property
    def auth_file(self) -> Path:
        """A locked lab's admin credentials (``cogs acl apply --cluster-dir`` the lab dir)."""
        return adminauth.path_in(self.dir)

    def client_kwargs(self) -> dict[str, Any]:
        """The admin's credentials when the lab's cluster is locked (auth.conf), else none."""
        admin = adminauth.read_dir(self.dir)
        return admin.client_kw() if admin else {}

    def node_pid(self, node: str) -> int | None:
        """The pid of ``node``'s redis-server, None when it is not running."""
        return self._pid(node) or None

    def status(self) -> LabStatus:
        """Hosts, addresses, links (parameters and frame counters), nodes and the cluster."""
        return lab_status(self)

    # -- internals -------------------------------------------------------------------

    def _pid(self, node: str, *, required: bool = False) -> int:
        h = self.host(node)
        if h.role != "node":
            raise LabError(f"{node} is a middlebox, not a coordinator node")
        try:
            pid = int((self.dir / node / "redis.pid").read_text())
        except (OSError, ValueError):
            pid = 0
        if pid and not (netns._alive(pid) and pid in netns.pids_in(h.netns)):
            pid = 0
        if required and not pid:
            raise LabError(f"{node}'s redis-server is not running (lab.restart({node!r}) starts it)")
        return pid

    def _build(self, progress: Progress) -> None:
        netns.add_namespace(self.lab_netns)
        hosts_file = "127.0.0.1 localhost\n" + "".join(f"{h.addr} {h.name}\n" for h in self.hosts.values())
        for h in self.hosts.values():
            netns.add_namespace(h.netns)
            netns.write_etc(h.netns, "hosts", hosts_file)
            wire(self.lab_netns, h)
        progress(f"{len(self.hosts)} hosts in namespaces {self.lab_netns[:-3]}*, links to {self.lab_netns}")

    def _start_switch(self, progress: Progress) -> None:
        cfg = {
            "ports": [
                {"name": h.name, "ifname": h.link, "mac": h.mac, **self._state["links"][h.name]}
                for h in self.hosts.values()
            ],
            "sock": str(self.dir / "switch.sock"),
            "pidfile": str(self.dir / "switch.pid"),
            "log": str(self.dir / "switch.log"),
        }
        (self.dir / "switch.json").write_text(json.dumps(cfg, indent=2))
        argv = [sys.executable, "-m", "cogs.lab.switch", str(self.dir / "switch.json")]
        netns.run(["ip", "netns", "exec", self.lab_netns, *argv], "starting the lab switch")  # returns once it serves
        _wait("the lab switch", lambda: bool(self._switch({"op": "stats"}, quiet=True)), 15, self.dir / "switch.log")
        lk = self._state["links"][next(iter(self.hosts))]
        progress(
            f"links: {lk['delay_us']:g}us one way ±{lk['jitter_us']:g}us, loss {lk['loss']:g}, "
            f"rate {lk['rate_bps'] or 'unlimited'} (userspace switch, pid {self._switch({'op': 'stats'})['pid']})"
        )

    @property
    def state(self) -> dict[str, Any]:
        """What ``up`` recorded (tag, links, partitions, ...), as kept in the lab dir."""
        return self._state

    def switch(self, req: dict[str, Any]) -> dict[str, Any]:
        """One request to the lab's link switch (its reply)."""
        return self._switch(req)

    def _switch(self, req: dict[str, Any], *, quiet: bool = False) -> dict[str, Any]:
        try:
            reply = request(self.dir / "switch.sock", req)
        except (OSError, ValueError) as e:
            if quiet:
                return {}
            raise LabError(f"the lab switch does not answer ({e}): is the lab up? (`cogs lab status`)") from e
        if not reply.get("ok"):
            raise LabError(f"the lab switch refused {req.get('op')}: {reply.get('error')}")
        return reply

    def _start_node(self, node: Node, exe: str) -> None:
        h = self.hosts[node.name]
        d = self.dir / node.name
        d.mkdir(parents=True, exist_ok=True)
        (d / ACL_FILE).touch()
        argv = [
            exe, str(CONFIG_PATH),
            *Deployment.node_args(node, announce_ip=h.addr, bind=f"{h.addr} 127.0.0.1", data_dir=str(d)),
            "--daemonize", "yes", "--pidfile", str(d / "redis.pid"), "--logfile", str(d / "redis.log"),
            *(("--include", str(self.auth_file)) if self.auth_file.exists() else ()),  # a locked lab's masterauth
        ]  # fmt: skip
        netns.run(["ip", "netns", "exec", h.netns, *argv], f"starting redis-server on {h.name}")

        def ping() -> bool:
            try:
                with redis.Redis(host="127.0.0.1", port=node.port, socket_timeout=1, socket_connect_timeout=1) as c:
                    return bool(c.ping())
            except redis.AuthenticationError:  # NOAUTH: a locked node, up
                return True

        _wait(f"redis-server on {h.name}", lambda: _quietly(lambda: self.call(h.name, ping)), 15, d / "redis.log")

    def _form(self, catalog: str | Path | None, progress: Progress) -> None:
        argv = self.deployment.init_argv(str(Path(catalog).resolve()) if catalog else None)
        cogs = Path(sys.executable).parent / "cogs"
        launcher = [str(cogs)] if cogs.exists() else [sys.executable, "-m", "cogs.cli"]
        argv = [*launcher, *argv[1:]]
        first = self.deployment.nodes[0].name
        progress(f"forming the cluster on {first}: {' '.join(self.deployment.init_argv())}")
        r = self.exec(first, argv, timeout=180)
        if r.returncode != 0:
            raise LabError(f"forming the cluster failed (exit {r.returncode}): {r.stderr.strip()[-1500:]}")
        progress(f"cluster ok, library loaded: {self.url}")
        # the keeper (usage limits) on the first node's host, as compose runs it; teardown
        # ends it with every process of the lab's namespaces
        keeper = [*launcher, *self.deployment.keeper_argv()[1:]]
        log_file = shlex.quote(str(self.dir / "keeper.log"))
        argv = [*keeper, "--cluster-dir", str(self.dir)]
        r = self.exec(first, ["sh", "-c", f"setsid {shlex.join(argv)} </dev/null >>{log_file} 2>&1 &"], timeout=30)
        if r.returncode != 0:
            raise LabError(f"starting the keeper failed (exit {r.returncode}): {r.stderr.strip()[-500:]}")
        progress(f"keeper counting the NFs' usage for their limits (log: {self.dir / 'keeper.log'})")

    def _save(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.dir / f"{STATE}.tmp"
        tmp.write_text(json.dumps(self._state, indent=2))
        tmp.replace(self.dir / STATE)


def _clean_dir(d: Path) -> None:
    """A lab starts empty: old node data (another cluster's nodes.conf) would not form,
    and an old auth.conf is the password of a cluster that is gone."""
    d.mkdir(parents=True, exist_ok=True)
    for p in d.iterdir():
        if p.is_dir() and p.name.startswith("node"):
            shutil.rmtree(p)
        elif p.name in (STATE, "switch.json", "switch.sock", "switch.pid", "switch.log", adminauth.AUTH_FILE):
            p.unlink()


def _quietly(fn: Callable[[], bool]) -> bool:
    try:
        return fn()
    except (redis.RedisError, OSError, LabError):
        return False


def _wait(what: str, test: Callable[[], bool], timeout: float, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not test():
        if time.monotonic() > deadline:
            tail = log.read_text()[-800:] if log is not None and log.exists() else ""
            raise LabError(
                f"timed out after {timeout:.0f}s waiting for {what}" + (f"; log tail:\n{tail}" if tail else "")
            )
        time.sleep(0.05)


def wire(lab_netns: str, h: Host) -> None:
    """``h``'s link: a veth pair from the lab namespace to its ``eth0``, with its MAC and
    lab address, both ends up (at build time and when ``cogs lab scale`` adds a host)."""
    netns.ip(
        lab_netns, "link", "add", h.link, "type", "veth", "peer", "name", "eth0", "netns", h.netns,
        what=f"link of {h.name}",
    )  # fmt: skip
    netns.ip(h.netns, "link", "set", "eth0", "address", h.mac, what=f"MAC of {h.name}")
    netns.ip(h.netns, "addr", "add", f"{h.addr}/{NET_PREFIX}", "dev", "eth0", what=f"address of {h.name}")
    netns.ip(h.netns, "link", "set", "eth0", "up", what=f"eth0 of {h.name}")
    netns.ip(lab_netns, "link", "set", h.link, "up", what=f"lab end of {h.name}'s link")
