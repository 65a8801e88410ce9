"""The node agent resumes its IKE SAs across restarts, IKE only (`--dataplane none`, so it runs on
any kernel; the kernel lane's test_kernel_vm_resume.py adds the data plane and the pings): a
controller and two agents in namespaces, n2 restarted by SIGTERM, by kill -9 and into a build
with a bumped IKE state version: each time the same IKE SA and CHILD_SA go on (n1 sees no DELETE
and no new IKE SA, n1's DPD is answered); with the state file removed, a new IKE SA replaces it."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.agent.meshlab import MeshLab, resource, wait_for
from tests.dataplane.kernel.test_kernel_vm_resume import UPGRADED, deleted_by_peer, restart, spis
from tests.harness.netns import Lab


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[MeshLab]:
    with Lab(prefix="rs-", workdir=tmp_path) as lab:
        m = MeshLab(lab)
        m.dataplane = "none"
        m.start_controller()
        m.apply(resource("MeshPolicy", "mesh", {
            "topology": "full-mesh", "scope": "site", "members": {}, "auth": {"method": "psk"},
            "crypto": {"ikeProposals": ["aes256gcm16-prfsha256-x25519"],
                       "dpd": {"delaySeconds": 2, "timeoutSeconds": 10, "action": "restart"}},
        }))  # fmt: skip
        yield m


def ike_sent(m: MeshLab, name: str) -> int:
    return sum(int(v) for k, v in m.status(name)["stats"]["adapter"].items() if k == "datagrams_sent")


def test_restarts_resume_the_ike_sa_and_a_missing_state_file_falls_back(mesh: MeshLab) -> None:
    mesh.add_node(1)
    mesh.add_node(2)
    wait_for("one IKE SA and CHILD_SA each", lambda: all(spis(mesh, n)[1] for n in ("n1", "n2")), 40)
    before = {n: spis(mesh, n) for n in ("n1", "n2")}
    earlier = len(deleted_by_peer(mesh, "n1"))  # a duplicate of the start, both ends having initiated
    times = {}
    for label, sig, program in (("SIGTERM", signal.SIGTERM, None), ("kill -9", signal.SIGKILL, None),
                                ("upgrade", signal.SIGTERM, UPGRADED)):  # fmt: skip
        times[label] = restart(mesh, sig, program)
        assert mesh.status("n2")["resumed_at_start"]["resumed"] == 1, label
        t0 = time.monotonic()
        sent = ike_sent(mesh, "n2")
        # n1 probes n2 after 2 s of silence (no data plane: no traffic): n2 answers from the resumed SA.
        wait_for("n2 sending on the resumed SA", lambda sent=sent: ike_sent(mesh, "n2") > sent, 10, 0.05)
        times[label + " first IKE datagram"] = time.monotonic() - t0
        assert {n: spis(mesh, n) for n in ("n1", "n2")} == before, label
        assert len(deleted_by_peer(mesh, "n1")) == earlier, label
    print(f"\nn2 status up with the IKE SA resumed / first datagram answered after: {times}")
    log = (mesh.work / "n2.log").read_text()
    assert log.count("resumed 1 IKE SA(s) of 1") == 3
    # The keys in the state file reach neither the (debug) log nor the status document.
    (entry,) = json.loads((mesh.state_dir("n2") / "ike-sas.json").read_text())["sas"]
    children = entry["sa"]["children"]
    child_keys = [k for c in children for k in c["keys_in"] + c["keys_out"]]
    keys = [k for k in [*entry["sa"]["keys"].values(), *child_keys] if k]
    shown = log + json.dumps(mesh.status("n2")) + json.dumps(mesh.status("n1"))
    assert len(keys) >= 7 and not [k for k in keys if k in shown or k.upper() in shown]

    restart(mesh, signal.SIGTERM, between=lambda: (mesh.state_dir("n2") / "ike-sas.json").unlink())
    assert "no IKE SA resumed: no ike-sas.json" in (mesh.work / "n2.log").read_text()
    wait_for("a new IKE SA", lambda: spis(mesh, "n1")[0] not in (before["n1"][0], []) and
             len(spis(mesh, "n1")[0]) == 1, 40)  # fmt: skip
    wait_for("the new SA in the state file", lambda: json.loads(
        (mesh.state_dir("n2") / "ike-sas.json").read_text())["sas"], 10)  # fmt: skip

    # Leaving the mesh: DELETE to the peer, the state file (and its keys) gone.
    assert mesh.drain_agent("n2") == 0
    assert not (mesh.state_dir("n2") / "ike-sas.json").exists()
    wait_for("n1 told", lambda: len(deleted_by_peer(mesh, "n1")) > earlier, 10)
