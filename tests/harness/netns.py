"""Network-namespace "hosts" for tests: build small labs out of real namespaces and veth pairs.

Usage (inside a test; the ``lab`` fixture from tests/conftest.py does the ``with`` for you)::

    from tests.harness.netns import Lab

    with Lab(prefix="xy-") as lab:                 # every helper/test area uses its own prefix
        a, b = lab.host("a"), lab.host("b")
        lab.link(a, b, "198.18.1.1/24", "198.18.1.2/24")
        a.add_loopback_address("198.19.0.1/32")
        b.add_route("198.19.0.1/32", via="198.18.1.1")
        assert b.ping("198.19.0.1").loss_percent == 0
        proc = a.popen(["iperf3", "-s"], log=lab.workdir / "iperf.log")   # killed by PID on exit

Topologies: ``lab.link(a, b)`` joins two hosts with a veth pair; ``lab.switch("sw")`` is a namespace
with a bridge that hosts ``attach`` to; ``lab.router("r")`` is a host with IP forwarding on;
``lab.nat_box(...)`` is a router that masquerades (nft) traffic leaving its outside interface.

Namespace names are ``<prefix><run token>-<host name>``; the run token mixes the PID with random
bits so parallel runs never collide.  Veth ends are created directly inside their namespaces, so
interface names (<= 15 characters) only need to be unique per namespace.  ``Lab.close`` (also on
failure) kills every process started through ``popen``, runs ``on_close`` callbacks, kills every
process still inside a lab namespace (by PID), then deletes the namespaces; ``Lab.leftovers`` /
``leftover_namespaces`` tell what is still there.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from meshsec.meshctl.lab.netns import IP, exists, namespace_pids, run_captured, stop
from meshsec.meshctl.lab.netns import namespaces as list_namespaces

IFNAMSIZ_MAX = 15
_HOST_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,15}$")
_IFNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,14}$")
_PREFIX = re.compile(r"^[a-z0-9]{1,8}-$")
_KILL_GRACE_SECONDS = 3.0


class CommandError(RuntimeError):
    """A command run by the harness exited non-zero; carries everything needed to debug it."""

    def __init__(self, argv: Sequence[str], returncode: int, stdout: str, stderr: str) -> None:
        self.argv = list(argv)
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        super().__init__(
            f"command {' '.join(self.argv)!r} exited {returncode}\nstdout: {stdout.strip()}\n"
            f"stderr: {stderr.strip()}"
        )


def run(
    argv: Sequence[str],
    *,
    check: bool = True,
    timeout: float = 30.0,
    env: Mapping[str, str] | None = None,
    input: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a command in the caller's namespace and capture its output as text."""
    proc = run_captured(argv, timeout=timeout, env=env, input=input)
    if check and proc.returncode != 0:
        raise CommandError(argv, proc.returncode, proc.stdout, proc.stderr)
    return proc


def leftover_namespaces(prefix: str) -> list[str]:
    """Namespaces whose name starts with ``prefix`` (pass a run-specific prefix to be precise)."""
    return [name for name in list_namespaces() if name.startswith(prefix)]


def stop_process(proc: subprocess.Popen[bytes], grace: float = _KILL_GRACE_SECONDS) -> int | None:
    """SIGTERM, wait up to ``grace`` seconds, then SIGKILL; by PID only. Returns the exit code."""
    if proc.poll() is not None:
        return proc.returncode
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGTERM)
    try:
        return proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        return proc.wait(timeout=grace)


@dataclass(frozen=True)
class PingResult:
    transmitted: int
    received: int
    loss_percent: float
    rtt_avg_ms: float | None
    output: str

    @property
    def ok(self) -> bool:
        return self.transmitted > 0 and self.received == self.transmitted


_PING_COUNTS = re.compile(r"(\d+) packets transmitted, (\d+) (?:packets )?received")
_PING_LOSS = re.compile(r"([\d.]+)% packet loss")
_PING_RTT = re.compile(r"= [\d.]+/([\d.]+)/[\d.]+/[\d.]+ ms")


def lost_at(ping_output: str, count: int) -> list[float]:
    """When each unanswered echo request of `ping -D -c count` was sent (wall clock, from the
    neighbouring replies' timestamps: `-D` prints one per reply)."""
    replies = {int(m[2]): float(m[1]) for m in re.finditer(r"\[(\d+\.\d+)\] .*icmp_seq=(\d+)", ping_output)}
    found = []
    for seq in range(1, count + 1):
        if seq not in replies:
            before = [t for s, t in replies.items() if s < seq]
            found.append(max(before) if before else min(replies.values(), default=0.0))
    return found


def parse_ping(output: str) -> PingResult:
    counts = _PING_COUNTS.search(output)
    if counts is None:
        raise ValueError(f"cannot parse ping output: {output!r}")
    loss = _PING_LOSS.search(output)
    rtt = _PING_RTT.search(output)
    transmitted, received = int(counts.group(1)), int(counts.group(2))
    return PingResult(
        transmitted=transmitted,
        received=received,
        loss_percent=float(loss.group(1)) if loss else 100.0 * (1 - received / max(transmitted, 1)),
        rtt_avg_ms=float(rtt.group(1)) if rtt else None,
        output=output,
    )


def check_ifname(name: str) -> str:
    if not _IFNAME.match(name):
        raise ValueError(f"interface name {name!r} must be 1-{IFNAMSIZ_MAX} chars of [A-Za-z0-9_.-]")
    return name


class Host:
    """One network namespace. Create it through ``Lab.host`` so teardown is guaranteed."""

    def __init__(self, lab: Lab, name: str, ns: str) -> None:
        self.lab = lab
        self.name = name
        self.ns = ns

    def __repr__(self) -> str:
        return f"Host({self.name!r}, ns={self.ns!r})"

    # -- commands -------------------------------------------------------------------------------

    def argv(self, argv: Sequence[str]) -> list[str]:
        """``argv`` wrapped so it runs inside this namespace."""
        return [IP, "netns", "exec", self.ns, *argv]

    def run(
        self,
        argv: Sequence[str],
        *,
        check: bool = True,
        timeout: float = 30.0,
        env: Mapping[str, str] | None = None,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        return run(self.argv(argv), check=check, timeout=timeout, env=env, input=input)

    def popen(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        log: Path | None = None,
        cwd: Path | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start ``argv`` in its own session inside this namespace; the lab kills it by PID on close.

        ``ip netns exec`` execs the command, so ``.pid`` is the command's own PID. stdout and
        stderr go to ``log`` (appended) or /dev/null; nothing is piped, so nothing can block.
        """
        full_env = None if env is None else {**os.environ, **env}
        with contextlib.ExitStack() as stack:
            # The child keeps its own copy of the fd; ours closes when the stack exits.
            log_file = stack.enter_context(open(log, "ab")) if log is not None else None
            proc = subprocess.Popen(
                self.argv(argv),
                stdin=subprocess.DEVNULL,
                stdout=log_file if log_file is not None else subprocess.DEVNULL,
                stderr=subprocess.STDOUT if log_file is not None else subprocess.DEVNULL,
                env=full_env,
                cwd=cwd,
                start_new_session=True,
            )
        self.lab._track(proc)
        return proc

    # -- addressing and routing -----------------------------------------------------------------

    def ip(self, *args: str) -> str:
        return run([IP, "-n", self.ns, *args]).stdout

    def add_address(self, ifname: str, cidr: str) -> None:
        ipaddress.ip_interface(cidr)  # reject typos with a clear ValueError before calling ip
        self.ip("addr", "add", cidr, "dev", check_ifname(ifname))

    def add_loopback_address(self, cidr: str) -> None:
        """Inner addresses live on ``lo``: this kernel has no dummy interfaces."""
        self.add_address("lo", cidr)

    def add_route(
        self, dst: str, *, via: str | None = None, dev: str | None = None, src: str | None = None
    ) -> None:
        args = ["route", "replace", dst]
        if via is not None:
            args += ["via", via]
        if dev is not None:
            args += ["dev", check_ifname(dev)]
        if src is not None:
            args += ["src", src]
        if via is None and dev is None:
            raise ValueError(f"route to {dst} on {self.name} needs via= or dev=")
        self.ip(*args)

    def set_up(self, ifname: str) -> None:
        self.ip("link", "set", check_ifname(ifname), "up")

    def sysctl(self, key: str, value: str) -> None:
        self.run(["sysctl", "-q", "-w", f"{key}={value}"])

    def enable_forwarding(self) -> None:
        self.sysctl("net.ipv4.ip_forward", "1")
        self.sysctl("net.ipv6.conf.all.forwarding", "1")

    def addresses(self) -> list[str]:
        """All IPv4/IPv6 addresses in CIDR form (``ip -o addr``)."""
        out = self.ip("-o", "addr", "show")
        found: list[str] = []
        for line in out.splitlines():
            fields = line.split()
            if len(fields) >= 4 and fields[2] in ("inet", "inet6"):
                found.append(fields[3])
        return found

    def interfaces(self) -> list[str]:
        out = self.ip("-o", "link", "show")
        names: list[str] = []
        for line in out.splitlines():
            fields = line.split(":", 2)
            if len(fields) >= 2:
                names.append(fields[1].strip().split("@", 1)[0])
        return names

    def nft(self, ruleset: str) -> None:
        self.run(["nft", "-f", "-"], input=ruleset)

    def masquerade(self, out_ifname: str) -> None:
        """Source-NAT everything leaving ``out_ifname`` (a NAT box for NAT-T tests)."""
        self.nft(
            "table ip meshsec_nat {\n"
            "  chain postrouting {\n"
            "    type nat hook postrouting priority srcnat; policy accept;\n"
            f'    oifname "{check_ifname(out_ifname)}" masquerade\n'
            "  }\n"
            "}\n"
        )

    # -- probes ---------------------------------------------------------------------------------

    def ping(
        self,
        dst: str,
        *,
        count: int = 3,
        interval: float = 0.05,
        wait: float = 1.0,
        src: str | None = None,
        size: int | None = None,
    ) -> PingResult:
        """ICMP echo from this host; never raises on loss, read ``loss_percent`` instead."""
        argv = ["ping", "-n", "-q", "-c", str(count), "-i", str(interval), "-W", str(wait)]
        if src is not None:
            argv += ["-I", src]
        if size is not None:
            argv += ["-s", str(size)]
        if ":" in dst:
            argv.insert(1, "-6")
        proc = self.run([*argv, dst], check=False, timeout=count * (interval + wait) + 10)
        if proc.returncode not in (0, 1):
            raise CommandError(self.argv([*argv, dst]), proc.returncode, proc.stdout, proc.stderr)
        return parse_ping(proc.stdout)


class Switch:
    """A namespace holding a bridge ``br0``; hosts attach with a veth whose far end is a port."""

    BRIDGE = "br0"

    def __init__(self, host: Host) -> None:
        self.host = host
        self._ports = 0
        host.ip("link", "add", self.BRIDGE, "type", "bridge")
        host.set_up(self.BRIDGE)

    @property
    def name(self) -> str:
        return self.host.name

    def attach(self, host: Host, cidr: str | None = None, *, ifname: str = "eth0") -> str:
        """Plug ``host`` in through its interface ``ifname``; returns that interface name."""
        self._ports += 1
        port = f"p{self._ports}"
        self.host.lab._veth(host, ifname, self.host, port)
        self.host.ip("link", "set", port, "master", self.BRIDGE)
        self.host.set_up(port)
        if cidr is not None:
            host.add_address(ifname, cidr)
        return ifname


@dataclass(frozen=True)
class Leftovers:
    namespaces: list[str]
    pids: list[int]

    def __bool__(self) -> bool:
        return bool(self.namespaces or self.pids)


class Lab:
    """A set of namespaces with guaranteed teardown. Use as a context manager or call ``close``."""

    def __init__(self, prefix: str = "ht-", workdir: Path | None = None) -> None:
        if not _PREFIX.match(prefix):
            raise ValueError(f"namespace prefix {prefix!r} must be 1-8 chars of [a-z0-9] plus '-'")
        self.prefix = prefix
        self.token = f"{os.getpid() % 0x1000:03x}{secrets.token_hex(2)}"
        self.run_prefix = f"{prefix}{self.token}-"
        self._own_workdir = workdir is None
        self.workdir = Path(tempfile.mkdtemp(prefix=self.run_prefix)) if workdir is None else workdir
        self.hosts: dict[str, Host] = {}
        self._procs: list[subprocess.Popen[bytes]] = []
        self._on_close: list[Callable[[], object]] = []
        self._closed = False

    def __enter__(self) -> Lab:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- building -------------------------------------------------------------------------------

    def host(self, name: str) -> Host:
        if not _HOST_NAME.match(name):
            raise ValueError(f"host name {name!r} must be 1-16 chars of [a-z0-9-]")
        if name in self.hosts:
            raise ValueError(f"host {name!r} already exists in this lab")
        if self._closed:
            raise RuntimeError("lab is closed")
        ns = f"{self.run_prefix}{name}"
        run([IP, "netns", "add", ns])
        host = Host(self, name, ns)
        self.hosts[name] = host  # registered before anything else can fail, so close() deletes it
        host.set_up("lo")
        return host

    def router(self, name: str) -> Host:
        host = self.host(name)
        host.enable_forwarding()
        return host

    def switch(self, name: str) -> Switch:
        return Switch(self.host(name))

    def link(
        self,
        a: Host,
        b: Host,
        a_cidr: str | None = None,
        b_cidr: str | None = None,
        *,
        a_ifname: str | None = None,
        b_ifname: str | None = None,
        mtu: int | None = None,
    ) -> tuple[str, str]:
        """A veth pair between ``a`` and ``b`` (default names ``to-<peer>``); returns both names."""
        a_if = a_ifname or f"to-{b.name}"[:IFNAMSIZ_MAX]
        b_if = b_ifname or f"to-{a.name}"[:IFNAMSIZ_MAX]
        self._veth(a, a_if, b, b_if, mtu=mtu)
        if a_cidr is not None:
            a.add_address(a_if, a_cidr)
        if b_cidr is not None:
            b.add_address(b_if, b_cidr)
        return a_if, b_if

    def nat_box(
        self,
        name: str,
        inside: Host,
        inside_cidr: str,
        node_cidr: str,
        outside: Switch,
        outside_cidr: str,
    ) -> Host:
        """A router that masquerades ``inside`` behind ``outside_cidr`` on ``outside``.

        ``inside`` gets ``node_cidr`` on its ``eth0`` and a default route through the box.
        """
        box = self.router(name)
        self.link(box, inside, inside_cidr, node_cidr, a_ifname="inside", b_ifname="eth0")
        outside.attach(box, outside_cidr, ifname="outside")
        inside.add_route("default", via=str(ipaddress.ip_interface(inside_cidr).ip))
        box.masquerade("outside")
        return box

    def _veth(self, a: Host, a_if: str, b: Host, b_if: str, *, mtu: int | None = None) -> None:
        args = [IP, "link", "add", "name", check_ifname(a_if), "netns", a.ns]
        if mtu is not None:
            args += ["mtu", str(mtu)]
        args += ["type", "veth", "peer", "name", check_ifname(b_if), "netns", b.ns]
        if mtu is not None:
            args += ["mtu", str(mtu)]
        run(args)
        a.set_up(a_if)
        b.set_up(b_if)

    def _track(self, proc: subprocess.Popen[bytes]) -> None:
        self._procs.append(proc)

    def on_close(self, callback: Callable[[], object]) -> None:
        """Run ``callback`` at close, after processes are stopped and before namespaces go (LIFO)."""
        self._on_close.append(callback)

    # -- teardown -------------------------------------------------------------------------------

    def namespaces(self) -> list[str]:
        return [h.ns for h in self.hosts.values()]

    def leftovers(self) -> Leftovers:
        """What of this lab still exists: its namespaces and its started processes still alive."""
        return Leftovers(
            namespaces=leftover_namespaces(self.run_prefix),
            pids=[p.pid for p in self._procs if p.poll() is None],
        )

    def close(self) -> None:
        """Kill started processes (SIGTERM then SIGKILL, by PID), then anything left inside the
        namespaces, then delete them. Safe to call twice; raises if something survived."""
        if self._closed:
            return
        self._closed = True
        errors: list[str] = []
        for proc in reversed(self._procs):
            try:
                stop_process(proc)
            except Exception as exc:  # keep tearing down the rest
                errors.append(f"pid {proc.pid}: {exc}")
        for callback in reversed(self._on_close):
            try:
                callback()
            except Exception as exc:
                errors.append(f"on_close {callback!r}: {exc}")
        # Something started by a test through other means (or a daemon's children) would keep a
        # deleted namespace alive invisibly: kill what is still inside, by PID.
        for ns in self.namespaces():
            # Until the PID is gone from the process table, not merely a zombie.
            stop(namespace_pids(ns), grace=_KILL_GRACE_SECONDS, alive=exists)
        for ns in self.namespaces():
            deleted = run([IP, "netns", "del", ns], check=False)
            if deleted.returncode != 0 and ns in list_namespaces():
                errors.append(f"netns del {ns}: {deleted.stderr.strip()}")
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
        left = self.leftovers()
        if left:
            errors.append(f"left behind: {left}")
        if errors:
            raise RuntimeError("lab teardown incomplete: " + "; ".join(errors))

