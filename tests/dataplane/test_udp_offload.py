"""UDP GSO/GRO on the encapsulation socket, in a throwaway namespace: a run of ESP datagrams sent with
one sendmsg arrives coalesced at a GRO socket; the reader splits runs back into datagrams (ESP and
IKE alike), and traffic is identical with offload on and off (udp_offload_script.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.harness.netns import Lab

pytestmark = pytest.mark.netns
SCRIPT = Path(__file__).with_name("udp_offload_script.py")


def test_udp_gso_runs_and_gro_splitting(lab: Lab) -> None:
    host = lab.host("o")
    host.add_loopback_address("198.18.0.1/32")
    host.add_loopback_address("198.18.0.2/32")
    proc = host.run([sys.executable, str(SCRIPT)], check=False, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("OK"), proc.stdout + proc.stderr
