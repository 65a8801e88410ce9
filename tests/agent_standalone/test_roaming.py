"""roaming.py: which IKE SAs move when our address goes away (MOBIKE initiator side), on real
engine SAs; and is_local against the host's real addresses."""

from __future__ import annotations

from meshsec.agent.adapters.records import SaRecord
from meshsec.agent.adapters.roaming import Roam, is_local, roams
from meshsec.agent.ike import Address
from tests.ike.lifecycle import B, Net
from tests.ike.test_child_rekey import configs


def _record(mobike: bool) -> SaRecord:
    a_cfg, _ = configs(mobike=True)
    _, b_cfg = configs(mobike=mobike)
    net = Net([a_cfg], [b_cfg])
    net.a.connect(a_cfg, B, net.now)
    net.settle()
    return SaRecord(net.a.sa(), None, 0.0)


def _unroutable(host: str) -> str:
    raise OSError("network unreachable")


def test_only_mobike_sas_whose_address_went_away_move_to_the_new_source() -> None:
    moving, without_mobike = _record(mobike=True), _record(mobike=False)
    old = moving.sa.local.host  # 198.18.7.1 (both)
    gone = {old}
    found = roams([moving, without_mobike], lambda h: h not in gone, lambda remote: "198.18.7.30")
    assert found == [Roam(moving, Address("198.18.7.30", moving.sa.local.port))]
    # Still held: nothing moves; no route to the peer (yet): wait for the next event.
    assert roams([moving], lambda h: True, lambda remote: "198.18.7.30") == []
    assert roams([moving], lambda h: h not in gone, _unroutable) == []
    # The kernel still picks the vanished address (a stale route): no move to nowhere.
    assert roams([moving], lambda h: h not in gone, lambda remote: old) == []


def test_is_local_knows_the_loopback_and_not_a_foreign_address() -> None:
    assert is_local("127.0.0.1")
    assert not is_local("198.18.255.254")  # in no namespace of ours
