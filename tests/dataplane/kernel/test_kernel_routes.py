"""Routes for outbound tunnel policies (policy-based mode), on the host kernel: routing needs no ESP.

Site a (198.18.0.1, inner 198.19.1.1 on lo) is linked to its peer b (198.18.0.2) by a veth; the
kernel backend programs a's namespace, and everything is read back with `ip` as an operator would.
"""

from __future__ import annotations

import ipaddress
import json
import logging
from collections.abc import AsyncIterator

import pytest

from meshsec.agent.dataplane.api import (
    Capabilities,
    Direction,
    IpsecProtocol,
    Mode,
    Policy,
    PolicyAction,
    Template,
    TrafficSelector,
)
from meshsec.agent.dataplane.kernel import mtu
from meshsec.agent.dataplane.kernel.backend import KernelDataPlane
from meshsec.agent.dataplane.kernel.routes import DEFAULT_ROUTE_TABLE, RouteTable
from tests.harness.netns import Host, Lab

pytestmark = pytest.mark.netns

A, B = ipaddress.ip_address("198.18.0.1"), ipaddress.ip_address("198.18.0.2")
INNER_A = "198.19.1.1"
NET1, NET2 = ipaddress.ip_network("198.19.1.0/24"), ipaddress.ip_network("198.19.2.0/24")
NET3 = ipaddress.ip_network("198.19.3.0/24")
LINK_MTU = 1500
_probed: list[Capabilities] = []  # probes are per kernel: once per test session is enough


@pytest.fixture
def netns_prefix() -> str:
    return "kr-"


@pytest.fixture
def site(lab: Lab) -> Host:
    a, b = lab.host("a"), lab.host("b")
    lab.link(a, b, f"{A}/24", f"{B}/24", mtu=LINK_MTU)
    a.add_loopback_address(f"{INNER_A}/32")
    return a


async def _plane(lab: Lab, site: Host,
                 route_table: RouteTable | None = DEFAULT_ROUTE_TABLE) -> KernelDataPlane:
    plane = KernelDataPlane(netns=site.ns, scratch_netns=f"{lab.run_prefix}probe",
                            capabilities=_probed[0] if _probed else None, route_table=route_table)
    await plane.start()
    if not _probed:
        _probed.append(plane.capabilities)
    return plane


@pytest.fixture
async def dp(lab: Lab, site: Host) -> AsyncIterator[KernelDataPlane]:
    plane = await _plane(lab, site)
    try:
        yield plane
    finally:
        await plane.flush_owned()
        await plane.close()


def _out(sel: TrafficSelector, peer: ipaddress.IPv4Address | ipaddress.IPv6Address = B,
         mode: Mode = Mode.TUNNEL, reqid: int = 5) -> Policy:
    outer = (A, peer) if mode is Mode.TUNNEL else (None, None)
    return Policy(sel, Direction.OUT, template=Template(IpsecProtocol.ESP, mode, *outer, reqid))


def _routes(host: Host, table: str = "220") -> dict[str, dict[str, object]]:
    proc = host.run(["ip", "-j", "-d", "route", "show", "table", table], check=False)
    if "table does not exist" in proc.stderr:  # no route was ever added to it
        return {}
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.strip()
    return {r["dst"]: r for r in (json.loads(out) if out else [])}


def _mtu(route: dict[str, object]) -> int:
    metrics = route.get("metrics", [])
    assert isinstance(metrics, list)
    return int(next(m["mtu"] for m in metrics if "mtu" in m))


async def test_out_tunnel_policy_gets_a_route_with_inner_src_and_tunnel_mtu(dp: KernelDataPlane,
                                                                            site: Host) -> None:
    await dp.ensure_policy(_out(TrafficSelector(NET1, NET2)))
    route = _routes(site)[str(NET2)]
    assert route["gateway"] == str(B) and route["dev"] == "to-b"
    assert route["prefsrc"] == INNER_A and route["protocol"] == "211"
    expected = mtu.tunnel_mtu(LINK_MTU, ipv6_outer=False, udp_encap=True)
    assert _mtu(route) == expected and 1300 < expected < LINK_MTU
    assert "220:\tfrom all lookup 220" in site.ip("rule", "show")
    # What a local sender gets: the inner source the peer's inbound policy accepts, the tunnel MTU.
    got = site.ip("route", "get", "198.19.2.7")
    assert f"src {INNER_A}" in got and f"mtu {expected}" in got and f"via {B}" in got

    # In/fwd policies, block, transport mode and re-ensuring the same policy add nothing.
    tmpl = _out(TrafficSelector(NET1, NET3)).template
    await dp.ensure_policies([
        Policy(TrafficSelector(NET3, NET1), Direction.IN, template=tmpl),
        Policy(TrafficSelector(NET3, NET1), Direction.FWD, template=tmpl),
        Policy(TrafficSelector(NET1, NET3), Direction.OUT, action=PolicyAction.BLOCK),
        _out(TrafficSelector(ipaddress.ip_network(f"{A}/32"), ipaddress.ip_network(f"{B}/32")),
             mode=Mode.TRANSPORT),
        _out(TrafficSelector(NET1, NET2)),
    ])  # fmt: skip
    assert set(_routes(site)) == {str(NET2)}

    await dp.delete_policy(TrafficSelector(NET1, NET2), Direction.OUT)
    assert _routes(site) == {}
    assert "198.19.2.0" not in site.ip("route", "show", "table", "all")


async def test_route_stays_until_the_last_out_policy_for_its_prefix_goes(dp: KernelDataPlane,
                                                                        site: Host) -> None:
    whole = TrafficSelector(NET1, NET2)
    one_host = TrafficSelector(ipaddress.ip_network(f"{INNER_A}/32"), NET2)
    await dp.ensure_policies([_out(whole), _out(one_host, reqid=6)])
    assert set(_routes(site)) == {str(NET2)}
    await dp.delete_policy(whole, Direction.OUT)
    assert set(_routes(site)) == {str(NET2)}
    await dp.delete_policy(one_host, Direction.OUT)
    assert _routes(site) == {}


async def test_flush_owned_removes_our_routes_and_leaves_foreign_ones(dp: KernelDataPlane,
                                                                      site: Host) -> None:
    # An administrator's route in the same table (strongSwan's would be proto static too), and one
    # in main to the same prefix as ours.
    site.ip("route", "add", str(NET3), "via", str(B), "table", "220", "proto", "static")
    site.ip("route", "add", str(NET2), "via", str(B), "proto", "static")
    await dp.ensure_policies([_out(TrafficSelector(NET1, NET2)), _out(TrafficSelector(NET1, NET3))])
    # The foreign route in our table holds NET3's slot: replace takes it over (like strongSwan).
    assert set(_routes(site)) == {str(NET2), str(NET3)}
    site.ip("route", "add", "198.19.4.0/24", "via", str(B), "table", "220", "proto", "static")
    await dp.flush_owned()
    assert set(_routes(site)) == {"198.19.4.0/24"}
    assert _routes(site)["198.19.4.0/24"]["protocol"] == "static"
    assert str(NET2) in _routes(site, "main")


async def test_a_restarted_agent_removes_the_route_of_a_policy_it_did_not_install(lab: Lab,
                                                                                  site: Host) -> None:
    first = await _plane(lab, site)
    await first.ensure_policies([_out(TrafficSelector(NET1, NET2)),
                                 _out(TrafficSelector(NET3, NET2), reqid=7),
                                 _out(TrafficSelector(NET1, NET3), reqid=8)])
    await first.close()
    second = await _plane(lab, site)
    try:
        assert set(_routes(site)) == {str(NET2), str(NET3)}
        await second.delete_policy(TrafficSelector(NET1, NET2), Direction.OUT)
        assert set(_routes(site)) == {str(NET2), str(NET3)}  # NET3 -> NET2 still needs it
        await second.delete_policy(TrafficSelector(NET3, NET2), Direction.OUT)
        await second.delete_policy(TrafficSelector(NET1, NET3), Direction.OUT)
        assert _routes(site) == {}
    finally:
        await second.flush_owned()
        await second.close()


async def test_unreachable_peer_keeps_the_policy_and_says_why(dp: KernelDataPlane, site: Host,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    stray = ipaddress.ip_address("198.18.200.9")  # no route to it from the site
    await dp.ensure_policy(_out(TrafficSelector(NET1, NET2), peer=stray))
    assert await dp.get_policy(TrafficSelector(NET1, NET2), Direction.OUT) is not None
    assert _routes(site) == {} and dp.route_errors == 1
    assert f"route to {NET2}: no route to the peer {stray}" in caplog.text
    # Once the peer is reachable, ensuring the policy again installs the route.
    site.add_route(f"{stray}/32", via=str(B))
    await dp.ensure_policy(_out(TrafficSelector(NET1, NET2), peer=stray))
    assert _routes(site)[str(NET2)]["gateway"] == str(B)


async def test_other_table_or_no_routes_at_all(lab: Lab, site: Host) -> None:
    custom = await _plane(lab, site, route_table=RouteTable(table=1220, rule_priority=1220, protocol=212))
    try:
        await custom.ensure_policy(_out(TrafficSelector(NET1, NET2)))
        assert set(_routes(site, "1220")) == {str(NET2)} and _routes(site) == {}
        assert _routes(site, "1220")[str(NET2)]["protocol"] == "212"
    finally:
        await custom.flush_owned()
        await custom.close()
    assert _routes(site, "1220") == {}
    bare = await _plane(lab, site, route_table=None)
    try:
        await bare.ensure_policy(_out(TrafficSelector(NET1, NET2)))
        assert _routes(site) == {} and _routes(site, "1220") == {}
    finally:
        await bare.flush_owned()
        await bare.close()


async def test_inner_ipv6_over_ipv4_and_a_refused_route_in_a_batch(dp: KernelDataPlane, site: Host,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    inner6 = TrafficSelector(ipaddress.ip_network("::ffff:198.19.1.0/120"),
                             ipaddress.ip_network("::ffff:198.19.5.0/120"))
    # The kernel refuses an IPv6 route over a device without IPv6: the rest of the batch stands.
    site.sysctl("net.ipv6.conf.to-b.disable_ipv6", "1")
    await dp.ensure_policies([_out(inner6), _out(TrafficSelector(NET1, NET2), reqid=6)])
    assert set(_routes(site)) == {str(NET2)} and dp.route_errors == 1
    assert f"route to {inner6.dst}: IPv6 is disabled on nexthop device" in caplog.text
    site.sysctl("net.ipv6.conf.to-b.disable_ipv6", "0")
    await dp.ensure_policy(_out(inner6))
    out = site.ip("-6", "route", "show", "table", "220")
    # No `via`: an IPv4 next hop cannot serve an IPv6 route; the XFRM policy picks the peer.
    assert out.startswith("::ffff:198.19.5.0/120 dev to-b proto 211") and "via" not in out, out
    await dp.flush_owned()
    assert site.ip("-6", "route", "show", "table", "220").strip() == ""


def _clamping_table(host: Host) -> str:
    proc = host.run(["nft", "list", "table", "inet", mtu.NFT_TABLE], check=False)
    return proc.stdout if proc.returncode == 0 else ""


async def test_mss_clamping_follows_the_out_policies_level_triggered(dp: KernelDataPlane, site: Host) -> None:
    assert _clamping_table(site) == ""
    await dp.ensure_policy(Policy(TrafficSelector(NET2, NET1), Direction.IN,
                                  template=_out(TrafficSelector(NET1, NET2)).template))
    assert _clamping_table(site) == ""  # inbound policies alone clamp nothing
    await dp.ensure_policy(_out(TrafficSelector(NET1, NET2)))
    await dp.ensure_policy(_out(TrafficSelector(NET1, NET3), reqid=6))
    table = _clamping_table(site)
    assert table.count("maxseg size set rt mtu") == 2, table  # forward and output, once each
    # Someone deleted it: the next bulk ensure (a reconcile) puts it back.
    site.run(["nft", "delete", "table", "inet", mtu.NFT_TABLE])
    await dp.ensure_policies([_out(TrafficSelector(NET1, NET2))])
    assert "maxseg size set rt mtu" in _clamping_table(site)
    await dp.delete_policy(TrafficSelector(NET1, NET2), Direction.OUT)
    assert _clamping_table(site) != ""  # NET3's tunnel still needs it
    await dp.delete_policy(TrafficSelector(NET1, NET3), Direction.OUT)
    assert _clamping_table(site) == "" and dp.mss_clamping_errors == 0
    # A table an earlier process left behind goes with flush_owned.
    await mtu.ensure_mss_clamping(site.ns)
    await dp.flush_owned()
    assert _clamping_table(site) == ""


async def test_route_mtu_follows_the_path_mtu_towards_the_peer(dp: KernelDataPlane, site: Host) -> None:
    # The link is 1500 but the administrator knows the path to the peer carries only 1400.
    site.ip("route", "replace", f"{B}/32", "dev", "to-b", "mtu", "1400")
    await dp.ensure_policy(_out(TrafficSelector(NET1, NET2)))
    assert _mtu(_routes(site)[str(NET2)]) == mtu.tunnel_mtu(1400, ipv6_outer=False, udp_encap=True)
