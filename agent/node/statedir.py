"""The agent's state directory: its key, certificate and CA bundle, and the last desired state.

Every file is written whole (temporary file, fsync, rename) with mode 0600, so a crash never
leaves half a certificate behind and nothing in it is readable by other users: the key and the
persisted desired state (which holds pair PSKs) are secrets.

`ike-sas.json` carries what a restarted agent needs to resume its IKE SAs (the engine's
snapshots, which hold SK_* keys): a versioned envelope, written only when its content changed,
removed when the node leaves the mesh (`meshsec-agent drain`). Reading it never raises: a missing,
corrupt, stale or unknown-version file is a `ResumeState` with no SAs and the reason, so the agent
falls back to make-before-break and says why."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meshsec.common.secrets import Secret

KEY = "node.key"
CERT = "node.crt"
CA = "ca.pem"
DESIRED = "desired.pb"
STATUS_SOCKET = "status.sock"
DATAPLANE_SOCKET = "dataplane.sock"  # the userspace data-plane daemon's control socket (0600)
IKE_STATE = "ike-sas.json"
IKE_STATE_FORMAT = "meshsec-ike-state"
IKE_STATE_VERSION = 2
# How a file of an earlier version becomes one of the next: version -> (the entries of that
# version -> the entries of version + 1). When IKE_STATE_VERSION is bumped, the step from the
# previous version goes here, so an upgraded agent resumes what the previous build wrote; a
# version with no path to the current one (a downgrade, or a file from far back) falls back.
Migration = Callable[[list[dict[str, Any]]], list[dict[str, Any]]]


def _v1_to_v2(sas: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """2: entries say their kind ("tunnel" or "road-warrior": a road warrior's SA resumes on the
    gateway's pool config, once that is known). A version-1 file held tunnels only."""
    return [{**entry, "kind": "tunnel"} for entry in sas]


IKE_STATE_MIGRATIONS: dict[int, Migration] = {1: _v1_to_v2}


def readable_versions(current: int, migrations: dict[int, Migration]) -> frozenset[int]:
    """The current version and every earlier one with a chain of migrations up to it."""
    found = {current}
    version = current - 1
    while version in migrations:
        found.add(version)
        version -= 1
    return frozenset(found)


def migrate(sas: list[dict[str, Any]], version: int, current: int,
            migrations: dict[int, Migration]) -> list[dict[str, Any]]:  # fmt: skip
    while version < current:
        sas = migrations[version](sas)
        version += 1
    return sas


# Versions this build reads (an upgrade reads the previous one; a downgrade falls back).
IKE_STATE_READABLE = readable_versions(IKE_STATE_VERSION, IKE_STATE_MIGRATIONS)
# Older than this, every IKE SA in it is past DPD at any peer we know of: resuming would only
# answer for SAs the peers already dropped.
IKE_STATE_MAX_AGE = 3600.0
MAX_IKE_STATE_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class ResumeState:
    """What `load_ike_state` found: the SA snapshots to resume, or none and why (the reason names
    the file and the problem, never its content)."""

    sas: tuple[dict[str, Any], ...]
    problem: str | None = None
    version: int | None = None
    written_at: float | None = None


class StateDir:
    def __init__(self, path: Path, ike_state_version: int | None = None,
                 migrations: dict[int, Migration] | None = None) -> None:  # fmt: skip
        """`ike_state_version`/`migrations`: this build's (tests pass a bumped version, as the
        next release will have it)."""
        self.path = path
        self.ike_state_version = IKE_STATE_VERSION if ike_state_version is None else ike_state_version
        self.migrations = IKE_STATE_MIGRATIONS if migrations is None else migrations
        self._last_ike_body: str | None = None  # what save_ike_state last wrote

    def prepare(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        os.chmod(self.path, 0o700)

    def file(self, name: str) -> Path:
        return self.path / name

    def write(self, name: str, data: bytes) -> None:
        target = self.file(name)
        tmp = target.with_name(f".{name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
        dfd = os.open(self.path, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    def read(self, name: str) -> bytes | None:
        try:
            return self.file(name).read_bytes()
        except FileNotFoundError:
            return None

    def remove(self, name: str) -> bool:
        try:
            self.file(name).unlink()
        except FileNotFoundError:
            return False
        return True

    def enrolled(self) -> bool:
        return all(self.file(n).exists() for n in (KEY, CERT, CA))

    def key(self) -> Secret | None:
        data = self.read(KEY)
        return Secret(data) if data is not None else None

    # ------------------------------------------------------------------ IKE SAs to resume

    def save_ike_state(self, sas: list[dict[str, Any]], now: float | None = None) -> bool:
        """Writes the snapshots if they differ from what the file holds; returns whether it wrote.
        `written_at` is outside the comparison, so an unchanged state is never rewritten."""
        body = json.dumps(sas, sort_keys=True, separators=(",", ":"))
        if body == self._last_ike_body:
            return False
        doc = {"format": IKE_STATE_FORMAT, "version": self.ike_state_version,
               "written_at": time.time() if now is None else now, "sas": sas}  # fmt: skip
        self.write(IKE_STATE, json.dumps(doc, sort_keys=True).encode())
        self._last_ike_body = body
        return True

    def load_ike_state(self, now: float | None = None, max_age: float = IKE_STATE_MAX_AGE) -> ResumeState:
        path = self.file(IKE_STATE)
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            return ResumeState((), f"no {IKE_STATE} in {self.path} (first start, or the node left the mesh)")
        if size > MAX_IKE_STATE_BYTES:
            return ResumeState((), f"{path} is {size} bytes, over the {MAX_IKE_STATE_BYTES} limit")
        try:
            doc = json.loads(path.read_bytes())
        except (OSError, ValueError) as exc:
            return ResumeState((), f"{path} is unreadable or not JSON ({type(exc).__name__})")
        if not isinstance(doc, dict) or doc.get("format") != IKE_STATE_FORMAT:
            return ResumeState((), f"{path} is not a {IKE_STATE_FORMAT} file")
        version, written, sas = doc.get("version"), doc.get("written_at"), doc.get("sas")
        readable_set = readable_versions(self.ike_state_version, self.migrations)
        if not isinstance(version, int) or isinstance(version, bool) or version not in readable_set:
            readable = ", ".join(map(str, sorted(readable_set)))
            return ResumeState((), f"{path} has state version {version!r}; this build reads {readable}",
                               version if isinstance(version, int) else None)  # fmt: skip
        if not isinstance(written, int | float) or not isinstance(sas, list) \
                or not all(isinstance(s, dict) for s in sas):  # fmt: skip
            return ResumeState((), f"{path} (version {version}) is malformed", version)
        age = (time.time() if now is None else now) - written
        if age > max_age:
            return ResumeState((), f"{path} is stale (written {age:.0f} s ago, limit {max_age:.0f} s)",
                               version, float(written))  # fmt: skip
        try:
            sas = migrate(sas, version, self.ike_state_version, self.migrations)
        except (KeyError, TypeError, ValueError) as exc:
            return ResumeState((), f"{path} (version {version}) could not be migrated to version "
                               f"{self.ike_state_version} ({type(exc).__name__})", version)  # fmt: skip
        return ResumeState(tuple(sas), None, version, float(written))

    def remove_ike_state(self) -> bool:
        """On leaving the mesh: the keys in it must not outlive the SAs they belonged to."""
        self._last_ike_body = None
        return self.remove(IKE_STATE)
