"""The namespace plumbing the lab needs: namespaces, veth pairs, addresses, routes, processes.

Deliberately small: it runs ``ip``/``nft``/``sysctl`` and reports failures with the command and its
output. Processes are started with ``ip netns exec`` (which execs, so the PID is the program's own)
in their own session, and are only ever stopped by PID.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

IP = shutil.which("ip") or "/usr/sbin/ip"


class CommandFailed(RuntimeError):
    def __init__(self, argv: Sequence[str], returncode: int, output: str) -> None:
        super().__init__(f"`{' '.join(argv)}` exited {returncode}: {output.strip()}")
        self.argv = list(argv)
        self.returncode = returncode
        self.output = output


def run_captured(
    argv: Sequence[str],
    *,
    timeout: float = 30.0,
    env: Mapping[str, str] | None = None,
    input: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` to its end with its output captured as text; ``env`` is added to ours. Stdin is
    closed unless ``input`` is given, so nothing waits on a terminal. The caller judges the exit."""
    return subprocess.run(
        list(argv),
        capture_output=True,
        text=True,
        input=input,
        timeout=timeout,
        env=None if env is None else {**os.environ, **env},
        check=False,
        stdin=None if input is not None else subprocess.DEVNULL,
    )


def run(argv: Sequence[str], *, check: bool = True, input: str | None = None, timeout: float = 30.0) -> str:
    proc = run_captured(argv, input=input, timeout=timeout)
    if check and proc.returncode != 0:
        raise CommandFailed(argv, proc.returncode, proc.stderr or proc.stdout)
    return proc.stdout


def in_ns(ns: str | None, argv: Sequence[str]) -> list[str]:
    return list(argv) if ns is None else [IP, "netns", "exec", ns, *argv]


def namespaces() -> list[str]:
    return [line.split()[0] for line in run([IP, "netns", "list"]).splitlines() if line.strip()]


def add_namespace(ns: str) -> None:
    run([IP, "netns", "add", ns])
    run([IP, "-n", ns, "link", "set", "lo", "up"])


def delete_namespace(ns: str) -> None:
    run([IP, "netns", "del", ns], check=False)


def namespace_pids(ns: str) -> list[int]:
    return [int(tok) for tok in run([IP, "netns", "pids", ns], check=False).split() if tok.isdigit()]


def ip(ns: str | None, *args: str) -> str:
    return run([IP, *(["-n", ns] if ns else []), *args])


def veth(a_ns: str | None, a_if: str, b_ns: str | None, b_if: str) -> None:
    """A veth pair with each end created directly in its namespace (None: the host's)."""
    argv = [IP, "link", "add", "name", a_if]
    if a_ns:
        argv += ["netns", a_ns]
    argv += ["type", "veth", "peer", "name", b_if]
    if b_ns:
        argv += ["netns", b_ns]
    run(argv)
    ip(a_ns, "link", "set", a_if, "up")
    ip(b_ns, "link", "set", b_if, "up")


def link_exists(ns: str | None, ifname: str) -> bool:
    return (
        subprocess.run(
            [IP, *(["-n", ns] if ns else []), "link", "show", ifname], capture_output=True, check=False
        ).returncode
        == 0
    )


def sysctl(ns: str, key: str, value: str) -> None:
    run(in_ns(ns, ["sysctl", "-q", "-w", f"{key}={value}"]))


def nft(ns: str, ruleset: str) -> None:
    run(in_ns(ns, ["nft", "-f", "-"]), input=ruleset)


def popen(ns: str | None, argv: Sequence[str], log: Path, env: Mapping[str, str] | None = None) -> int:
    """Start ``argv`` (in ``ns``) detached from us, output appended to ``log``; returns its PID."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            in_ns(ns, argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
    return proc.pid


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (field 22 of /proc/PID/stat), to tell a
    recorded process from a later one that reused its PID."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def exists(pid: int) -> bool:
    """The PID is in the process table (a zombie is, until its parent reaps it)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def alive(pid: int) -> bool:
    if not exists(pid):
        return False
    # A zombie child of ours is dead for every purpose here.
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    with contextlib.suppress(OSError):
        if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
            return False
    return True


def stop(pids: Sequence[int], grace: float = 5.0, *, alive: Callable[[int], bool] = alive) -> list[int]:
    """SIGTERM, wait up to ``grace`` seconds, then SIGKILL; returns PIDs that survived. ``alive``
    says when a PID counts as gone (the default: a zombie already does)."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    remaining = [p for p in pids if alive(p)]
    while remaining and time.monotonic() < deadline:
        time.sleep(0.05)
        remaining = [p for p in remaining if alive(p)]
    for pid in remaining:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 2.0
    while remaining and time.monotonic() < deadline:
        time.sleep(0.05)
        remaining = [p for p in remaining if alive(p)]
    return remaining


def ping(ns: str, dst: str, *, count: int = 3, interval: float = 0.2, wait: float = 1.0) -> tuple[int, int]:
    """ICMP echo from ``ns``; (transmitted, received)."""
    out = run(
        in_ns(ns, ["ping", "-n", "-q", "-c", str(count), "-i", str(interval), "-W", str(wait), dst]),
        check=False,
        timeout=count * (interval + wait) + 10,
    )
    for line in out.splitlines():
        if "packets transmitted" in line:
            fields = line.replace(",", "").split()
            return int(fields[0]), int(fields[3])
    return count, 0


def kernel_has_esp(ns: str) -> bool:
    """Can this kernel hold an ESP SA? Probed with a throwaway SA inside one of the lab's namespaces."""
    probe = [
        "xfrm",
        "state",
        "add",
        "src",
        "198.18.0.1",
        "dst",
        "198.18.0.2",
        "proto",
        "esp",
        "spi",
        "0x4d534c01",
        "mode",
        "tunnel",
        "enc",
        "cbc(aes)",
        "0x" + "00" * 16,
        "auth",
        "hmac(sha256)",
        "0x" + "00" * 32,
    ]
    ok = subprocess.run([IP, "-n", ns, *probe], capture_output=True, check=False).returncode == 0
    if ok:
        run([IP, "-n", ns, "xfrm", "state", "flush"], check=False)
    return ok
