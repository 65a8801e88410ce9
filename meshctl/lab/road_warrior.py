"""The lab's road warrior: a strongSwan charon in `rw-laptop` loaded with the swanctl.conf profile
`meshctl remote-access profile bob laptop` renders (device key made here, certificate signed by
the controller), connecting to the remote-access gateway dc1-gw1 (pool `staff` in
deploy/examples/lab-mesh.yaml) and pinging dc1-host from its virtual address."""

from __future__ import annotations

import argparse
import io
import re
import time
from pathlib import Path

from meshsec.meshctl import remote_access
from meshsec.meshctl.client import AdminClient
from meshsec.meshctl.lab import netns
from meshsec.meshctl.lab.plan import World
from meshsec.meshctl.lab.proof import Probe, ProbeResult, run_probe
from meshsec.meshctl.lab.state import LabState
from meshsec.meshctl.lab.strongswan import Charon

CONNECTION_PREFIX = "meshsec-"


def connect(plan: World, state: LabState, client: AdminClient, data_dir: Path, run_dir: Path,
            timeout: float = 30.0) -> tuple[str, ProbeResult]:  # fmt: skip
    """Starts the charon, connects it and pings; returns its virtual address and the ping."""
    rw = plan.road_warrior
    assert rw is not None
    charon = Charon(plan.ns(rw.ns), data_dir / rw.ns, run_dir, name=rw.ns)
    charon.write_settings()
    args = argparse.Namespace(
        user=rw.user, device=rw.device, format="swanctl", server=None, server_id=None,
        out=charon.swanctl_dir, ttl=0, passphrase_file=None, passphrase_env=None,
    )  # fmt: skip
    remote_access.profile(args, client, io.StringIO())
    pid = charon.start()
    state.add_process(f"charon/{rw.ns}", pid, plan.ns(rw.ns), charon.log)
    charon.load()
    conf = (charon.swanctl_dir / "swanctl.conf").read_text()
    name = next(n for n in re.findall(r"^\s{4}(\S+) \{", conf, re.M) if n.startswith(CONNECTION_PREFIX))
    wait = str(int(timeout))
    charon.swanctl("--initiate", "--ike", name, "--child", name, "--timeout", wait, timeout=timeout + 5)
    vip = _virtual_address(plan.ns(rw.ns), timeout=5.0)
    probe = Probe(f"road warrior {rw.user}/{rw.device}", plan.ns(rw.ns), "dc1", rw.target, True)
    result = run_probe(probe)
    return vip, result


def _virtual_address(ns: str, timeout: float) -> str:
    """charon puts the address from the CFG_REPLY on an interface of the laptop."""
    deadline = time.monotonic() + timeout
    while True:
        text = netns.run(netns.in_ns(ns, ["ip", "-4", "-o", "addr", "show"]))
        found = re.findall(r"inet (198\.19\.\d+\.\d+)/", text)
        if found or time.monotonic() > deadline:
            return found[0] if found else "?"
        time.sleep(0.1)
