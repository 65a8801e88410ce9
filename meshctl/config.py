"""meshctl's contexts file (kubeconfig-like): named controllers and the credentials for each.

    apiVersion: meshsec.io/v1alpha1
    kind: Config
    current-context: prod
    contexts:
    - name: prod
      server: ctl.example.net:7443      # or unix:/run/meshsec/admin.sock
      ca: prod/ca.pem                   # paths; relative ones are relative to this file
      cert: prod/alice.pem
      key: prod/alice-key.pem
      server-name: ctl.example.net      # optional: the name to check in the serving certificate

The file holds paths, never key material, and is written mode 0600 all the same. Where it is:
``--config``, else ``$MESHCONFIG``, else ``$XDG_CONFIG_HOME/meshsec/config`` (``~/.config``).
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from meshsec.meshctl.client import ENV_CONTROLLER, Target, TlsFiles
from meshsec.meshctl.errors import UsageError

ENV_CONFIG = "MESHCONFIG"
API_VERSION = "meshsec.io/v1alpha1"
_FIELDS = ("server", "ca", "cert", "key", "server-name")


def default_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "meshsec" / "config"


def config_path(explicit: Path | None) -> Path:
    if explicit is not None:
        return explicit
    env = os.environ.get(ENV_CONFIG)
    return Path(env) if env else default_path()


@dataclass
class Context:
    name: str
    server: str
    ca: str = ""
    cert: str = ""
    key: str = ""
    server_name: str = ""

    def as_dict(self) -> dict[str, str]:
        doc = {"name": self.name, "server": self.server}
        for key, value in (("ca", self.ca), ("cert", self.cert), ("key", self.key)):
            if value:
                doc[key] = value
        if self.server_name:
            doc["server-name"] = self.server_name
        return doc


@dataclass
class MeshConfig:
    path: Path
    contexts: dict[str, Context] = field(default_factory=dict)
    current: str = ""

    @classmethod
    def load(cls, path: Path) -> MeshConfig:
        """The file at `path`; an absent file is an empty configuration."""
        try:
            text = path.read_text()
        except FileNotFoundError:
            return cls(path)
        except OSError as exc:
            raise UsageError(f"cannot read meshctl config {path}: {exc.strerror or exc}") from None
        try:
            doc = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise UsageError(f"meshctl config {path} is not valid YAML: {exc}") from None
        if not isinstance(doc, dict):
            raise UsageError(f"meshctl config {path}: expected a mapping at the top")
        config = cls(path, current=str(doc.get("current-context") or ""))
        entries = doc.get("contexts") or []
        if not isinstance(entries, list):
            raise UsageError(f"meshctl config {path}: contexts must be a list")
        for i, entry in enumerate(entries):
            config._add(entry, f"meshctl config {path}: contexts[{i}]")
        return config

    def _add(self, entry: Any, where: str) -> None:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise UsageError(f"{where}: each context needs a name")
        unknown = set(entry) - {"name", *_FIELDS}
        if unknown:
            raise UsageError(f"{where}: unknown field(s) {', '.join(sorted(map(str, unknown)))}")
        if not isinstance(entry.get("server"), str) or not entry["server"]:
            raise UsageError(f"{where} ({entry['name']}): server is required")
        values = {k: entry.get(k, "") for k in _FIELDS}
        if not all(isinstance(v, str) for v in values.values()):
            raise UsageError(f"{where} ({entry['name']}): fields must be strings")
        self.contexts[entry["name"]] = Context(
            entry["name"],
            values["server"],
            values["ca"],
            values["cert"],
            values["key"],
            values["server-name"],
        )

    def document(self) -> dict[str, Any]:
        return {
            "apiVersion": API_VERSION,
            "kind": "Config",
            "current-context": self.current,
            "contexts": [c.as_dict() for c in self.contexts.values()],
        }

    def save(self) -> None:
        """Written whole to a 0600 file beside the old one, then renamed over it."""
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        temporary = self.path.with_name(f".{self.path.name}.tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            yaml.safe_dump(self.document(), out, sort_keys=False)
        os.chmod(temporary, 0o600)
        os.replace(temporary, self.path)

    def context(self, name: str) -> Context:
        try:
            return self.contexts[name]
        except KeyError:
            known = ", ".join(sorted(self.contexts)) or "none"
            raise UsageError(
                f"no context {name!r} in {self.path} (contexts: {known})",
                hint="create one with `meshctl config set-context NAME --server ...`",
            ) from None

    def file_ref(self, path: Path) -> str:
        """How the file names `path`: relative when it lies beside the config, so the folder moves whole."""
        path = path.resolve()
        try:
            return str(path.relative_to(self.path.parent.resolve()))
        except ValueError:
            return str(path)

    def resolve_file(self, ref: str) -> Path:
        path = Path(ref).expanduser()
        return path if path.is_absolute() else self.path.parent / path


def _context_connection(config: MeshConfig, context: Context) -> tuple[Target, TlsFiles | None]:
    target = Target.parse(context.server)
    if target.socket_path is not None:
        return target, None
    missing = [f for f, v in (("ca", context.ca), ("cert", context.cert), ("key", context.key)) if not v]
    if missing:
        raise UsageError(
            f"context {context.name} ({context.server}) has no {', '.join(missing)}: a TCP controller "
            "needs an admin certificate",
            hint=f"meshctl config set-context {context.name} --ca FILE --cert FILE --key FILE",
        )
    files = TlsFiles(
        config.resolve_file(context.ca),
        config.resolve_file(context.cert),
        config.resolve_file(context.key),
        context.server_name,
    )
    return target, files


def connection(args: argparse.Namespace) -> tuple[Target, TlsFiles | None]:
    """Where to connect: --controller/--tls-* flags, else --context, else $MESHSEC_CONTROLLER,
    else the config's current context, else the local admin socket."""
    flags = (args.tls_ca, args.tls_cert, args.tls_key)
    flag_tls = None
    if any(flags):
        if not all(flags):
            raise UsageError("--tls-ca, --tls-cert and --tls-key go together")
        flag_tls = TlsFiles(args.tls_ca, args.tls_cert, args.tls_key, args.tls_server_name or "")
    if args.controller or (flag_tls is not None and not args.context):
        return Target.parse(args.controller), flag_tls
    if not args.context and os.environ.get(ENV_CONTROLLER):
        return Target.parse(None), flag_tls
    config = MeshConfig.load(config_path(args.config))
    name = args.context or config.current
    if not name:
        return Target.parse(None), None
    target, tls = _context_connection(config, config.context(name))
    return target, flag_tls or tls


__all__ = ["ENV_CONFIG", "Context", "MeshConfig", "config_path", "connection", "default_path"]
