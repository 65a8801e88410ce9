"""The namespace lab does what later tests rely on: links, routes, NAT, processes, full teardown."""

from __future__ import annotations

import os
import time

import pytest

from tests.harness.netns import Lab, check_ifname, leftover_namespaces, namespace_pids, parse_ping

PING_OK = """PING 198.18.1.2 (198.18.1.2) 56(84) bytes of data.

--- 198.18.1.2 ping statistics ---
3 packets transmitted, 3 received, 0% packet loss, time 102ms
rtt min/avg/max/mdev = 0.031/0.047/0.070/0.016 ms
"""

PING_LOSS = """--- 198.19.0.9 ping statistics ---
4 packets transmitted, 1 received, +3 errors, 75% packet loss, time 3050ms
"""


def test_parse_ping() -> None:
    ok = parse_ping(PING_OK)
    assert (ok.transmitted, ok.received, ok.loss_percent, ok.rtt_avg_ms) == (3, 3, 0.0, 0.047)
    assert ok.ok
    lossy = parse_ping(PING_LOSS)
    assert (lossy.transmitted, lossy.received, lossy.loss_percent, lossy.rtt_avg_ms) == (4, 1, 75.0, None)
    assert not lossy.ok
    with pytest.raises(ValueError, match="cannot parse"):
        parse_ping("ping: connect: Network is unreachable\n")


def test_names_are_validated() -> None:
    with pytest.raises(ValueError, match="prefix"):
        Lab(prefix="Bad_Prefix")
    with pytest.raises(ValueError, match="interface name"):
        check_ifname("sixteen-chars-xx")
    assert check_ifname("fifteen-chars-x") == "fifteen-chars-x"
    with Lab(prefix="ht-") as lab, pytest.raises(ValueError, match="host name"):
        lab.host("Has Space")


@pytest.mark.netns
def test_two_hosts_ping_and_teardown_leaves_nothing() -> None:
    with Lab(prefix="ht-") as lab:
        a, b = lab.host("a"), lab.host("b")
        a_if, b_if = lab.link(a, b, "198.18.1.1/24", "198.18.1.2/24")
        assert (a_if, b_if) == ("to-b", "to-a")
        assert "198.18.1.1/24" in a.addresses()
        assert set(b.interfaces()) == {"lo", "to-a"}
        result = a.ping("198.18.1.2", count=3)
        assert result.ok and result.loss_percent == 0.0 and result.rtt_avg_ms is not None
        assert a.ping("198.18.1.3", count=1, wait=0.2).received == 0  # nobody there
        run_prefix = lab.run_prefix
        assert sorted(leftover_namespaces(run_prefix)) == sorted(lab.namespaces())
    assert leftover_namespaces(run_prefix) == []
    assert not lab.leftovers()


@pytest.mark.netns
def test_teardown_on_failure_kills_processes_and_deletes_namespaces() -> None:
    lab = Lab(prefix="ht-")
    closed: list[bool] = []
    with pytest.raises(RuntimeError, match="boom"), lab:
        host = lab.host("p")
        lab.on_close(lambda: closed.append(tracked.poll() is not None))
        tracked = host.popen(["sleep", "300"])
        # A daemon that escaped popen's tracking still lives in the namespace; close() must find it.
        host.run(["sh", "-c", "setsid sleep 301 >/dev/null 2>&1 < /dev/null &"])
        deadline = time.monotonic() + 5
        while len(namespace_pids(host.ns)) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        stray = [pid for pid in namespace_pids(host.ns) if pid != tracked.pid]
        assert len(stray) == 1
        raise RuntimeError("boom")
    assert closed == [True]  # callbacks run once, after tracked processes are gone
    assert not os.path.exists(f"/proc/{stray[0]}")
    assert leftover_namespaces(lab.run_prefix) == []


@pytest.mark.netns
def test_routed_inner_addresses_on_loopback(lab: Lab) -> None:
    a, r, b = lab.host("a"), lab.router("r"), lab.host("b")
    lab.link(a, r, "198.18.1.2/24", "198.18.1.1/24")
    lab.link(b, r, "198.18.2.2/24", "198.18.2.1/24")
    a.add_loopback_address("198.19.0.1/32")
    b.add_loopback_address("198.19.0.2/32")
    a.add_route("198.19.0.2/32", via="198.18.1.1")
    a.add_route("198.18.2.0/24", via="198.18.1.1")
    b.add_route("198.19.0.1/32", via="198.18.2.1")
    b.add_route("198.18.1.0/24", via="198.18.2.1")
    # r knows the underlay but not the inner /32s yet: inner-to-inner must fail first.
    assert a.ping("198.19.0.2", src="198.19.0.1", count=1, wait=0.3).received == 0
    r.add_route("198.19.0.1/32", via="198.18.1.2")
    r.add_route("198.19.0.2/32", via="198.18.2.2")
    assert a.ping("198.19.0.2", src="198.19.0.1").ok


@pytest.mark.netns
def test_switch_and_nat_box(lab: Lab) -> None:
    sw = lab.switch("sw")
    peer, node = lab.host("peer"), lab.host("node")
    sw.attach(peer, "198.18.0.2/24")
    lab.nat_box("nat", inside=node, inside_cidr="198.18.100.1/24", node_cidr="198.18.100.2/24",
                outside=sw, outside_cidr="198.18.0.1/24")
    # peer has no route to 198.18.100.0/24, so only masquerading lets replies come back.
    assert node.ping("198.18.0.2").ok
    nat = lab.hosts["nat"]
    nat.run(["nft", "delete", "table", "ip", "meshsec_nat"])
    assert node.ping("198.18.0.2", count=2, wait=0.3).received == 0
