"""Suite-wide test setup: import path, skips for missing capabilities, lab fixtures.

- The repo root goes on ``sys.path`` so ``from tests.harness.netns import Lab`` works from any test
  folder, whatever the working directory or import mode.
- Tests marked ``netns``, ``strongswan``, ``etcd`` or ``podman`` are skipped with a clear reason when the
  machine cannot run them (probed once per session, only if such a test was collected).
- ``lab``: a fresh ``tests.harness.netns.Lab`` torn down after the test, with namespaces named
  ``<netns_prefix><run token>-<host>``. Override the ``netns_prefix`` fixture in your own
  conftest.py (or test module) to use the prefix you were given.
- ``charons``: starts strongSwan instances in lab hosts and stops them before the lab goes away.
- Every test runs the IKE engine in strict mode (``meshsec.agent.ike.strict``, and
  ``MESHSEC_STRICT=1`` for the processes a test starts): an unexpected exception inside the
  engine is raised instead of failing the SA closed, so no test passes on a swallowed bug. A test
  of the fail-closed path itself asks for the ``not_strict`` fixture.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from tests.harness.containers import podman_missing  # noqa: E402
from tests.harness.netns import Lab  # noqa: E402
from tests.harness.strongswan import CHARON, SWANCTL, CharonFactory  # noqa: E402

NETNS_REASON = "needs root and network namespaces (ip netns)"


@functools.cache
def _netns_missing() -> str | None:
    if os.geteuid() != 0:
        return f"{NETNS_REASON}: not running as root"
    if shutil.which("ip") is None and not os.path.exists("/usr/sbin/ip"):
        return f"{NETNS_REASON}: iproute2 'ip' not found"
    probe = f"ht-probe{os.getpid() % 100000}"
    try:
        added = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{NETNS_REASON}: {exc}"
    if added.returncode != 0:
        return f"{NETNS_REASON}: 'ip netns add' failed: {added.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True, timeout=10, check=False)
    return None


@functools.cache
def _strongswan_missing() -> str | None:
    for path in (CHARON, SWANCTL):
        if not os.access(path, os.X_OK):
            return f"needs strongSwan: {path} missing (apt-get install charon-systemd strongswan-swanctl)"
    return None


@functools.cache
def _etcd_missing() -> str | None:
    if shutil.which("etcd") is None:
        return "needs an etcd server binary: 'etcd' not on PATH (apt-get install etcd-server)"
    return None


_PROBES = {
    "netns": _netns_missing,
    "strongswan": _strongswan_missing,
    "etcd": _etcd_missing,
    "podman": podman_missing,
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        for marker, probe in _PROBES.items():
            if item.get_closest_marker(marker) is None:
                continue
            reason = probe()
            if reason is not None:
                item.add_marker(pytest.mark.skip(reason=reason))
                break


@pytest.fixture(autouse=True)
def _ike_strict(monkeypatch: pytest.MonkeyPatch) -> None:
    from meshsec.agent.ike import strict

    monkeypatch.setattr(strict, "enabled", True)
    monkeypatch.setenv("MESHSEC_STRICT", "1")


@pytest.fixture
def not_strict(monkeypatch: pytest.MonkeyPatch) -> None:
    """For tests of the fail-closed path: engine bugs are counted and contained, not raised."""
    from meshsec.agent.ike import strict

    monkeypatch.setattr(strict, "enabled", False)
    monkeypatch.delenv("MESHSEC_STRICT", raising=False)


@pytest.fixture
def netns_prefix() -> str:
    """Namespace name prefix for the ``lab`` fixture; override it with your own."""
    return "ms-"


@pytest.fixture
def lab(netns_prefix: str, tmp_path: Path) -> Iterator[Lab]:
    # Logs and configs go to tmp_path, which pytest keeps for the last runs: handy after a failure.
    with Lab(prefix=netns_prefix, workdir=tmp_path) as the_lab:
        yield the_lab


@pytest.fixture
def charons(lab: Lab) -> Iterator[CharonFactory]:
    factory = CharonFactory(lab)
    try:
        yield factory
    finally:
        factory.stop_all()
