"""The agent's state directory: its key, certificate and CA bundle, and the last desired state.

Every file is written whole (temporary file, fsync, rename) with mode 0600, so a crash never
leaves half a certificate behind and nothing in it is readable by other users: the key and the
persisted desired state (which holds pair PSKs) are secrets."""

from __future__ import annotations

import os
from pathlib import Path

from meshsec.common.secrets import Secret

KEY = "node.key"
CERT = "node.crt"
CA = "ca.pem"
DESIRED = "desired.pb"
STATUS_SOCKET = "status.sock"


class StateDir:
    def __init__(self, path: Path) -> None:
        self.path = path

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

    def enrolled(self) -> bool:
        return all(self.file(n).exists() for n in (KEY, CERT, CA))

    def key(self) -> Secret | None:
        data = self.read(KEY)
        return Secret(data) if data is not None else None
