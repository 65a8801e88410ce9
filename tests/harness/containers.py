"""Real containers for tests: the meshsec image (scripts/build-image.sh) run with podman.

Usage::

    from tests.harness.containers import Containers, meshsec_image

    image = meshsec_image()                          # builds or reuses the cached image
    with Containers(log_dir=tmp_path) as pods:       # every container removed on exit, by ID
        ctl = pods.run("ctl", image, ["meshsec-controller", ...], netns=host.ns)
        ctl.exec(["meshctl", "get", "nodes"])

A container joins a namespace the test made (``netns=`` -> ``--network ns:/run/netns/NS``), the
host's (``host_network=True``) or none at all: never podman's default bridge, which would put
10.88.0.0/16 on the host (docs/containers.md). Podman runs with runc and cgroupfs, the only
combination that works on these hosts, and with ulimits under the hosts' hard limits.

``Containers.close`` saves each container's output to ``<log_dir>/<name>.log`` (and prints the
tail of those that exited non-zero), then removes them by ID; ``leftovers`` lists what is still
there. Register ``close`` with ``Lab.on_close`` (``Containers(lab=...)`` does) so containers go
before their namespaces.

A run killed outright (SIGKILL, a CI job cancelled) cannot close anything. Each container is
labelled with its owner process (PID and start time, so a reused PID is not mistaken for it), and
every new ``Containers`` first removes the containers whose owner is gone (``remove_orphans``):
never another live run's, never one this harness did not label.
"""

from __future__ import annotations

import contextlib
import functools
import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from tests.harness.netns import CommandError, Lab, run

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO_ROOT / "scripts" / "build-image.sh"
PODMAN = shutil.which("podman") or "/usr/bin/podman"
# crun fails on hybrid cgroups; the default ulimits exceed the hosts' hard limit of 20000 files.
PODMAN_GLOBAL = ["--runtime", "runc", "--cgroup-manager", "cgroupfs"]
RUN_LIMITS = ["--ulimit", "nofile=20000:20000", "--ulimit", "nproc=4096:4096"]
LABEL = "io.meshsec.test"
OWNER_LABEL = "io.meshsec.test.owner"  # "<pid>-<start time in clock ticks>" of the test process
_NAME_MAX = 60


def podman_missing() -> str | None:
    """Why containers cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root for podman with runc"
    for tool in ("podman", "runc", "mmdebstrap"):
        if shutil.which(tool) is None:
            return f"needs {tool} (bash scripts/install.sh installs it)"
    return None


def podman(*args: str, check: bool = True, timeout: float = 60.0, input: str | None = None) -> str:
    return run([PODMAN, *PODMAN_GLOBAL, *args], check=check, timeout=timeout, input=input).stdout


def run_once(image: str, argv: Sequence[str], timeout: float = 60.0) -> str:
    """``argv`` in a throwaway container with no network; its stdout."""
    return podman("run", "--rm", "--network", "none", *RUN_LIMITS, image, *argv, timeout=timeout)


@functools.cache
def meshsec_image() -> str:
    """The image reference scripts/build-image.sh prints last (a no-op when nothing changed)."""
    proc = subprocess.run(
        ["bash", str(BUILD_SCRIPT)], capture_output=True, text=True, timeout=900, check=False
    )
    sys.stderr.write(proc.stderr)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise CommandError(["bash", str(BUILD_SCRIPT)], proc.returncode, proc.stdout, proc.stderr)
    return lines[-1]


def process_identity(pid: int) -> str | None:
    """``<pid>-<start time>`` of a running process (/proc/PID/stat field 22), or None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: count from its closing one.
    return f"{pid}-{stat.rsplit(')', 1)[1].split()[19]}"


def remove_orphans() -> list[str]:
    """Remove the containers whose owner process is gone (a killed test run); their names."""
    listing = podman("ps", "--all", "--no-trunc", "--filter", f"label={OWNER_LABEL}",
                     "--format", f'{{{{.ID}}}} {{{{.Names}}}} {{{{index .Labels "{OWNER_LABEL}"}}}}')
    orphans: dict[str, str] = {}
    for line in listing.splitlines():
        fields = line.split()
        if len(fields) != 3:
            continue
        container_id, name, owner = fields
        pid = owner.split("-", 1)[0]
        if pid.isdigit() and process_identity(int(pid)) != owner:
            orphans[container_id] = name
    if orphans:
        podman("rm", "--force", "--time", "0", *orphans, check=False, timeout=60)
        sys.stderr.write(f"removed containers left by a killed test run: {sorted(orphans.values())}\n")
    return sorted(orphans.values())


def _remove_by_id(ids: Sequence[str], grace: int) -> str:
    """``podman rm --force`` of ``ids``; what went wrong ("" if nothing), never raising: the
    caller checks what is left."""
    argv = [PODMAN, *PODMAN_GLOBAL, "rm", "--force", "--time", str(grace), *ids]
    try:
        done = run(argv, check=False, timeout=120 + grace * len(ids))
    except (subprocess.SubprocessError, OSError) as exc:
        return f"{exc}; "
    return f"{done.stderr.strip()}; " if done.returncode != 0 else ""


@dataclass
class Container:
    """One started container; ``id`` is what every command uses."""

    name: str
    id: str
    log: Path
    argv: list[str] = field(default_factory=list)

    def exec(self, argv: Sequence[str], *, check: bool = True, timeout: float = 30.0,
             user: str | None = None) -> subprocess.CompletedProcess[str]:
        extra = ["--user", user] if user is not None else []
        return run([PODMAN, *PODMAN_GLOBAL, "exec", *extra, self.id, *argv], check=check, timeout=timeout)

    def state(self) -> tuple[str, int]:
        """(status, exit code): ``running``, ``exited``, ... as podman reports it."""
        out = podman("inspect", "--format", "{{.State.Status}} {{.State.ExitCode}}", self.id).split()
        return out[0], int(out[1])

    def running(self) -> bool:
        return self.state()[0] == "running"

    def logs(self) -> str:
        proc = run([PODMAN, *PODMAN_GLOBAL, "logs", self.id], check=False, timeout=30)
        return proc.stdout + proc.stderr

    def stop(self, grace: int = 3) -> None:
        podman("stop", "--time", str(grace), self.id, check=False, timeout=grace + 30)


class Containers:
    """The containers one test started, removed (by ID) on close whatever happened."""

    def __init__(self, log_dir: Path, lab: Lab | None = None, prefix: str = "mst") -> None:
        self.log_dir = log_dir
        self.token = f"{prefix}-{os.getpid() % 0x1000:03x}{secrets.token_hex(2)}"
        self.started: list[Container] = []
        self._closed = False
        owner = process_identity(os.getpid())
        assert owner is not None
        self.owner = owner
        remove_orphans()
        if lab is not None:
            lab.on_close(self.close)

    def __enter__(self) -> Containers:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def run(
        self,
        name: str,
        image: str,
        argv: Sequence[str],
        *,
        netns: str | None = None,
        host_network: bool = False,
        user: str | None = None,
        caps: Sequence[str] = (),
        devices: Sequence[str] = (),
        volumes: Sequence[tuple[Path, str]] = (),
        env: dict[str, str] | None = None,
    ) -> Container:
        """Start ``argv`` detached; ``volumes`` are (host path, container path) bind mounts."""
        if self._closed:
            raise RuntimeError("containers closed")
        full = f"{self.token}-{name}"[:_NAME_MAX]
        if netns is not None and host_network:
            raise ValueError("netns= and host_network=True exclude each other")
        network = f"ns:/run/netns/{netns}" if netns else "host" if host_network else "none"
        args = ["run", "--detach", "--name", full, "--label", f"{LABEL}={self.token}",
                "--label", f"{OWNER_LABEL}={self.owner}",
                "--network", network, *RUN_LIMITS]
        args += ["--user", user] if user is not None else []
        for cap in caps:
            args += ["--cap-add", cap]
        for device in devices:
            args += ["--device", device]
        for host_path, path in volumes:
            args += ["--volume", f"{host_path}:{path}"]
        for key, value in (env or {}).items():
            args += ["--env", f"{key}={value}"]
        container_id = podman(*args, image, *argv).strip()
        container = Container(name, container_id, self.log_dir / f"{name}.log", list(argv))
        self.started.append(container)
        return container

    def remove(self, *containers: Container) -> str:
        """Save their output, then remove them (stopped together: one grace period for all);
        what podman said if it failed, else ""."""
        for container in containers:
            with contextlib.suppress(CommandError, subprocess.SubprocessError, OSError, IndexError):
                self._save_log(container)
        for container in containers:
            self.started.remove(container)
        return _remove_by_id([c.id for c in containers], grace=3)

    def _save_log(self, container: Container) -> None:
        container.log.parent.mkdir(parents=True, exist_ok=True)
        container.log.write_text(container.logs())
        status, code = container.state()
        if status != "running" and code != 0:
            tail = "\n".join(container.log.read_text(errors="replace").splitlines()[-20:])
            sys.stderr.write(f"\ncontainer {container.name} exited {code}; {container.log}:\n{tail}\n")

    def leftovers(self) -> list[str]:
        """IDs of this run's containers still known to podman."""
        out = podman("ps", "--all", "--quiet", "--no-trunc", "--filter", f"label={LABEL}={self.token}")
        return out.split()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        errors: list[str] = []
        said = self.remove(*reversed(self.started)) if self.started else ""
        left = self.leftovers()
        if left:  # podman timed out or refused one (a loaded machine): once more, no grace
            said += _remove_by_id(left, grace=0)
            left = self.leftovers()
        if left:
            errors.append(f"containers left behind: {left} ({said.strip() or 'podman said nothing'})")
        if errors:
            raise RuntimeError("container teardown incomplete: " + "; ".join(errors))
