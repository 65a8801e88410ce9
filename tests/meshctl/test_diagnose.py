"""diagnose's node findings that the namespace test cannot plant: clock skew (the agents share
the host clock there) and an expired certificate (an agent with one cannot report any more, so
the controller shows the last report it had)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from meshsec.agent.ike.constants import ProtocolId
from meshsec.meshctl.diagnose import ERROR, WARNING, diagnose, proposals_match
from meshsec.v1 import admin_pb2

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def node(
    name: str, *, skew: timedelta = timedelta(0), not_after: datetime | None = None, online: bool = True
) -> admin_pb2.TopologyNode:
    item = admin_pb2.TopologyNode(name=name, site="s1", online=online)
    seen = NOW - timedelta(seconds=5)
    item.last_seen.FromDatetime(seen)
    item.agent_clock.FromDatetime(seen + skew)
    if not_after is not None:
        item.status.certificate_not_after.FromDatetime(not_after)
    return item


def codes(*nodes: admin_pb2.TopologyNode) -> dict[tuple[str, str], str]:
    found = diagnose([], admin_pb2.Topology(nodes=nodes), [n.name for n in nodes], NOW)
    return {(f.object, f.code): f.severity for f in found}


def test_clock_skew_is_a_warning_then_an_error_past_the_certificate_backdating() -> None:
    got = codes(
        node("ok", skew=timedelta(seconds=3)),
        node("off", skew=timedelta(seconds=-90)),
        node("far", skew=timedelta(minutes=7)),
    )
    assert ("node/ok", "CLOCK_SKEW") not in got
    assert got[("node/off", "CLOCK_SKEW")] == WARNING
    assert got[("node/far", "CLOCK_SKEW")] == ERROR


def test_certificate_expired_expiring_and_fine() -> None:
    got = codes(
        node("gone", not_after=NOW - timedelta(minutes=1), online=False),
        node("soon", not_after=NOW + timedelta(minutes=20)),
        node("fine", not_after=NOW + timedelta(hours=8)),
    )
    assert got[("node/gone", "CERTIFICATE_EXPIRED")] == ERROR
    assert got[("node/gone", "NODE_OFFLINE")] == ERROR
    assert got[("node/soon", "CERTIFICATE_EXPIRING")] == WARNING
    assert not [k for k in got if k[0] == "node/fine"]


def test_proposals_match_uses_the_engine_selection() -> None:
    assert proposals_match(
        ["aes256gcm16-prfsha384-ecp384"],
        ["aes128-sha256-modp2048", "aes256gcm16-prfsha384-ecp384"],
        ProtocolId.IKE,
    )
    assert (
        proposals_match(["aes256gcm16-prfsha384-ecp384"], ["aes256gcm16-prfsha256-ecp384"], ProtocolId.IKE)
        is False
    )
    assert proposals_match(["nonsense"], ["aes128-sha256-modp2048"], ProtocolId.IKE) is None
