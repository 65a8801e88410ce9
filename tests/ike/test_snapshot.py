"""An IKE SA captured with snapshot.to_dict, carried through JSON and restored with from_dict in
a new agent (the data plane kept forwarding meanwhile) goes on as the same IKE SA: the peer's DPD
is answered, the CHILD_SA and the IKE SA rekey when they were due, message IDs continue, not a
packet of the data-plane model is lost, and the peer never sees a new IKE SA or a DELETE."""

from __future__ import annotations

import json

import pytest

from meshsec.agent.ike.constants import DhId, TransformType
from meshsec.agent.ike.events import ChildSaRekeyed, IkeSaDeleted, IkeSaEstablished, IkeSaFailed, IkeSaRekeyed
from meshsec.agent.ike.snapshot import SnapshotError, from_dict, to_dict

from .lifecycle import A, Agent, Net
from .test_ike_rekey import connected

DOWN = 3.0  # seconds the agent is away


def _net() -> Net:
    """A rekeys the IKE SA at +120 s; B probes A after 10 s of silence."""
    return connected({"rekey_time": 120, "rand_time": 0}, {"dpd_delay": 10.0, "rekey_time": 1000})


def _restart_a(net: Net) -> dict[str, object]:
    """Capture A's SA, replace A by a new agent holding the same data plane, restore into it."""
    old = net.a.sa()
    doc = json.loads(json.dumps(to_dict(old, net.now)))
    cfg = net.a.configs[0]
    fresh = Agent("agent-a", A, [cfg])
    fresh.dp = net.a.dp  # the kernel kept the SAs: the packet path never stopped
    net.a = fresh
    net.now += DOWN
    fresh.table.add(from_dict(doc, cfg, net.now, DOWN, rnd=fresh.rnd))
    return doc


def test_a_restored_ike_sa_goes_on_and_the_peer_notices_nothing() -> None:
    net = _net()
    established = net.now
    net.advance(5)
    old = net.a.sa()
    peer = net.b.sa()
    (old_child,) = old.children.values()
    before = (old.spi_i, old.spi_r, old.next_request_id, old.tasks.expected_request_id,
              old.lifetime.rekey_at, old_child.rekey_at)  # fmt: skip
    _restart_a(net)
    new = net.a.sa()
    assert new is not old
    assert (new.spi_i, new.spi_r, new.next_request_id, new.tasks.expected_request_id,
            new.lifetime.rekey_at, new.children[old_child.spi_in].rekey_at) == before  # fmt: skip
    assert new.remote_identity == old.remote_identity and new.keys == old.keys

    net.advance(40)  # B probes every 10 s of silence
    assert peer.stats["dpd_probes"] >= 3 and not net.b.of_type(IkeSaFailed)
    new.rekey_child(old_child.spi_in, net.now)  # new child keys from the restored SK_d
    net.advance(2)
    (rekeyed,) = net.a.of_type(ChildSaRekeyed)
    assert rekeyed.old_spi_in == old_child.spi_in
    assert new.next_request_id > before[2]  # the rekey and the DPD answers continued the IDs
    net.assert_no_loss()
    net.assert_mirrored()

    net.advance(established + 125 - net.now)  # the IKE SA rekey, due at +120 s
    assert net.a.of_type(IkeSaRekeyed) and net.b.of_type(IkeSaRekeyed)
    # The peer saw no second IKE_SA_INIT, and no DELETE but the rekey's own for the old SA.
    assert len(net.b.of_type(IkeSaEstablished)) == 1 and not net.b.of_type(IkeSaFailed)
    assert len(net.b.of_type(IkeSaDeleted)) == 1  # the IKE SA the rekey replaced
    net.assert_no_loss()
    net.assert_mirrored()


def test_a_retransmitted_request_gets_the_cached_response_after_a_restore() -> None:
    net = _net()
    net.advance(11)  # B's first DPD probe, answered by A
    dropped: list[bytes] = []

    def drop_answers(direction: str, d: object) -> bool:
        if direction == "a->b":
            dropped.append(d.data)  # type: ignore[attr-defined]
            return False
        return True

    net.filter = drop_answers
    net.advance(10)  # B's second probe: A answers, the answer is lost
    assert dropped
    net.filter = None
    answered = net.a.sa().tasks.expected_request_id
    _restart_a(net)
    net.advance(20)  # B retransmits; the restored A answers from its cache, then B goes on
    restored = net.a.sa()
    assert restored.stats["duplicate_request_answered"] >= 1  # from the restored cache
    assert restored.tasks.expected_request_id > answered  # and B's later probes were processed
    assert not net.b.of_type(IkeSaFailed) and len(net.b.of_type(IkeSaEstablished)) == 1


def test_an_exchange_in_flight_cannot_be_captured() -> None:
    net = _net()
    sa = net.a.sa()
    (spi,) = sa.children
    sa.rekey_child(spi, net.now)
    with pytest.raises(SnapshotError, match="in flight or queued"):
        to_dict(sa, net.now)
    net.settle()  # rekeyed, the old pair deleted: quiescent again, with the new pair
    (child,) = to_dict(sa, net.now)["children"]  # type: ignore[misc]
    assert child["spi_in"] != spi and child["spi_in"] in sa.children


def test_unknown_versions_and_malformed_documents_are_refused_without_quoting_keys() -> None:
    net = _net()
    sa = net.a.sa()
    doc = to_dict(sa, net.now)
    cfg = net.a.configs[0]
    with pytest.raises(SnapshotError, match="version 4; this build reads 1, 2, 3"):
        from_dict({**doc, "version": 4}, cfg, net.now, 0)
    secret = doc["keys"]["sk_d"]  # type: ignore[index]
    broken = {**doc, "keys": {**doc["keys"], "sk_ei": "zz" + secret}}  # type: ignore[dict-item]
    with pytest.raises(SnapshotError) as caught:
        from_dict(broken, cfg, net.now, 0)
    assert secret not in str(caught.value) and "zz" not in str(caught.value)
    missing = {k: v for k, v in doc.items() if k != "my_mid"}
    with pytest.raises(SnapshotError, match="malformed"):
        from_dict(missing, cfg, net.now, 0)


def test_a_hybrid_sa_keeps_its_additional_key_exchanges_and_a_version_1_document_has_none() -> None:
    hybrid = {"proposals": "aes256gcm16-prfsha256-x25519-ke1_mlkem768"}
    net = connected({**hybrid, "rekey_time": 120, "rand_time": 0}, {**hybrid, "rekey_time": 1000})
    sa = net.a.sa()
    assert sa.chosen is not None and sa.chosen.addke == ((TransformType.ADDKE1, DhId.ML_KEM_768),)
    doc = json.loads(json.dumps(to_dict(sa, net.now)))
    cfg = net.a.configs[0]
    assert from_dict(doc, cfg, net.now, 0).chosen == sa.chosen
    v1 = {**doc, "version": 1, "chosen": {k: v for k, v in doc["chosen"].items() if k != "addke"}}
    restored = from_dict(v1, cfg, net.now, 0).chosen
    assert restored is not None and restored.addke == () and restored.dh == sa.chosen.dh


def test_the_peers_rekey_waiting_for_ike_followup_ke_cannot_be_captured() -> None:
    hybrid = {"proposals": "aes256gcm16-prfsha256-x25519-ke1_mlkem768"}
    net = connected(hybrid, hybrid)
    net.a.sa().rekey(net.now)
    net.deliver_one()  # B answers the CREATE_CHILD_SA and waits for IKE_FOLLOWUP_KE
    with pytest.raises(SnapshotError, match="IKE_FOLLOWUP_KE"):
        to_dict(net.b.sa(), net.now)
