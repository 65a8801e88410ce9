"""The DataPlane contract of the userspace backend (SPI allocation, add/update/delete, policies and
their routes, ownership, the shared UDP 4500 socket, lifetimes), run in a throwaway namespace, and
recovery after the data plane is killed."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest

from tests.dataplane.sites import DataPlaneProcess, make_sites
from tests.harness.netns import Lab

pytestmark = pytest.mark.netns
SCRIPT = Path(__file__).with_name("backend_script.py")


def test_backend_contract(lab: Lab) -> None:
    host = lab.host("c")
    proc = host.run([sys.executable, str(SCRIPT)], check=False, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("OK"), proc.stdout + proc.stderr


def test_restart_after_kill_leaves_one_rule_and_working_routes(lab: Lab) -> None:
    a, _, _ = make_sites(lab)
    policy = {"selector": {"src": "198.19.1.0/24", "dst": "198.19.2.0/24"}, "direction": "out",
              "template": {"protocol": "esp", "mode": "tunnel", "src": "198.18.0.1", "dst": "198.18.0.2",
                           "reqid": 1}}
    first = DataPlaneProcess(lab, a)
    first.call("start", config={"tun_name": "ud0"})
    first.call("policy", policy=policy)
    assert "198.19.2.0/24" in a.ip("route", "show", "table", "2730")
    os.kill(first.proc.pid, signal.SIGKILL)  # a crash: no cleanup runs
    first.proc.wait(timeout=5)
    assert a.ip("rule", "show", "pref", "2730").strip()  # the rule outlives the process
    second = DataPlaneProcess(lab, a)
    second.call("start", config={"tun_name": "ud0"})
    assert len(a.ip("rule", "show", "pref", "2730").strip().splitlines()) == 1
    second.call("policy", policy=policy)
    assert a.ip("route", "show", "table", "2730").count("198.19.2.0/24") == 1
    second.call("flush")
    assert "198.19.2.0/24" not in a.ip("route", "show", "table", "2730")
