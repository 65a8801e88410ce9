"""What ``meshctl lab up`` needs before it touches anything: root, and the tools, named by package."""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from meshsec.meshctl.errors import UserError


@dataclass(frozen=True)
class Tool:
    program: str
    package: str  # the Debian package that ships it
    purpose: str
    required: bool = True


TOOLS = (
    Tool("ip", "iproute2", "namespaces, veth pairs and routes"),
    Tool("nft", "nftables", "the NAT box in front of the cloud VPC"),
    Tool("ping", "iputils-ping", "proving traffic crosses the mesh"),
    Tool("sysctl", "procps", "IP forwarding in the router namespaces"),
    Tool("dot", "graphviz", "the topology picture", required=False),
    Tool("charon-systemd", "charon-systemd", "the external strongSwan gateway", required=False),
    Tool("swanctl", "strongswan-swanctl", "loading the external gateway's configuration", required=False),
)
_SBIN = ("/usr/sbin", "/sbin", "/usr/bin", "/bin")


def find(program: str) -> str | None:
    found = shutil.which(program)
    if found:
        return found
    return next((f"{d}/{program}" for d in _SBIN if os.access(f"{d}/{program}", os.X_OK)), None)


def meshsec_program(name: str) -> str | None:
    """meshsec's own commands, preferring the ones installed next to this interpreter."""
    beside = Path(sys.executable).parent / name
    return str(beside) if os.access(beside, os.X_OK) else shutil.which(name)


def require_root() -> None:
    if os.geteuid() != 0:
        raise UserError(
            "meshctl lab needs root: it creates network namespaces, veth pairs and routes",
            hint="run it as root, e.g. `sudo meshctl lab up` (or `sudo bash scripts/lab.sh up`)",
        )


def check_tools() -> list[str]:
    """Raises naming the packages of missing required tools; returns warnings for optional ones."""
    missing = [t for t in TOOLS if t.required and find(t.program) is None]
    if missing:
        listing = "; ".join(f"`{t.program}` ({t.purpose})" for t in missing)
        packages = " ".join(sorted({t.package for t in missing}))
        raise UserError(f"missing tools: {listing}", hint=f"apt-get install {packages}")
    warnings = []
    for tool in TOOLS:
        if not tool.required and find(tool.program) is None:
            warnings.append(
                f"`{tool.program}` not found, so no {tool.purpose} (apt-get install {tool.package})"
            )
    if meshsec_program("meshsec-controller") is None:
        raise UserError(
            "meshsec-controller is not installed", hint="pip install -e . (or bash scripts/install.sh)"
        )
    return warnings


def strongswan_available() -> bool:
    return find("charon-systemd") is not None and find("swanctl") is not None
