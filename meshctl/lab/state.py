"""What the lab created, written down as it goes, so ``lab down`` removes exactly that.

The file is rewritten after every creation step (namespace, host interface, process), so even an
``up`` that crashed halfway leaves a complete list behind. Processes are recorded with their start
time, so a PID reused by some unrelated program after a reboot or crash is never signalled.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from meshsec.meshctl.lab import netns

RUN_DIR = Path("/run/meshsec-lab")
DATA_DIR = Path("/var/lib/meshsec-lab")
STATE_FILE = RUN_DIR / "state.json"


@dataclass
class Process:
    name: str  # "controller", "agent/dc1-gw1", "charon/extdc"
    pid: int
    start: int | None  # /proc start time, to recognise the same process later
    ns: str | None
    log: str
    argv: list[str] = field(default_factory=list)  # how it was started (`lab restart` starts it again)

    def is_ours(self) -> bool:
        return netns.alive(self.pid) and netns.start_time(self.pid) == self.start


@dataclass
class LabState:
    namespaces: list[str] = field(default_factory=list)
    host_links: list[str] = field(default_factory=list)
    processes: list[Process] = field(default_factory=list)
    files: list[str] = field(default_factory=list)  # directories/files to remove on down
    phase: str = "building"  # building -> up
    mode: str = ""  # how agents were run: "controller" or "standalone"
    datacenters: int = 2  # the plan `up` built (`lab restart` pings its pairs)
    external: bool = False

    def save(self, path: Path = STATE_FILE) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2) + "\n")
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path = STATE_FILE) -> LabState | None:
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise RuntimeError(
                f"{path} is unreadable ({exc}); remove it after checking `ip netns list`"
            ) from exc
        processes = [Process(**p) for p in raw.pop("processes", [])]
        return cls(processes=processes, **raw)

    def add_process(self, name: str, pid: int, ns: str | None, log: Path,
                    argv: list[str] | None = None) -> Process:  # fmt: skip
        proc = Process(name, pid, netns.start_time(pid), ns, str(log), list(argv or []))
        self.processes.append(proc)
        self.save()
        return proc

    def process(self, name: str) -> Process | None:
        return next((p for p in self.processes if p.name == name), None)
