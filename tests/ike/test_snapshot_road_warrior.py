"""A road warrior's IKE SA on the gateway, captured and restored as a restarted gateway agent
does (issue #17): the client's virtual address, the CFG_REPLY it was granted, its identity and
certificate CN and the narrowed CHILD_SA selectors come back, and the restored SA goes on (the
client's DPD is answered, its IKE rekey keeps the address). The client's own SA is not captured
(its addresses live on an interface the snapshot knows nothing of)."""

from __future__ import annotations

import ipaddress
import json

import pytest

from meshsec.agent.ike.events import IkeSaFailed, IkeSaRekeyed
from meshsec.agent.ike.sa import State
from meshsec.agent.ike.snapshot import SnapshotError, from_dict, to_dict
from meshsec.agent.ike.table import IkeSaTable
from tests.ike.peers import of_type
from tests.ike.test_config_payload import _connect, _pool

DOWN = 3.0


def test_a_restored_road_warrior_sa_keeps_its_address_and_goes_on() -> None:
    pair = _connect(_pool(), "carol")
    gw = pair.responder
    doc = json.loads(json.dumps(to_dict(gw, pair.now)))
    assert doc["virtual_addresses"] == ["198.19.60.1"] and doc["version"] == 3
    assert doc["cfg_reply"] == {"ip4": "198.19.60.1", "ip6": None, "dns": ["198.19.50.53"],
                                "subnets": ["198.19.50.0/24"]}  # fmt: skip

    pair.now += DOWN
    restored = from_dict(doc, gw.config, pair.now, DOWN, rnd=pair.rnd_r)
    assert restored.virtual_addresses == gw.virtual_addresses == (ipaddress.ip_address("198.19.60.1"),)
    assert restored.cfg_reply == gw.cfg_reply
    assert (restored.remote_identity, restored.peer_serial, restored.peer_common_name) == \
        (gw.remote_identity, gw.peer_serial, gw.peer_common_name)  # fmt: skip
    assert [(c.ts_local, c.ts_remote) for c in restored.children.values()] == \
        [(c.ts_local, c.ts_remote) for c in gw.children.values()]  # fmt: skip
    (child,) = restored.children.values()
    assert [str(t.start) for t in child.ts_remote] == ["198.19.60.1"]  # narrowed to the client

    pair.table = IkeSaTable(pair.responder_front)  # the new process holds only the restored SA
    pair.table.add(restored)
    pair.advance(pair.init_cfg.rekey_time + 60)  # the client rekeys the IKE SA with the restored one
    assert of_type(pair.events_i + pair.events_r, IkeSaRekeyed)
    assert not of_type(pair.events_i + pair.events_r, IkeSaFailed)
    current = [sa for sa in pair.table if sa.state is State.ESTABLISHED]
    assert [sa.virtual_addresses for sa in current] == [(ipaddress.ip_address("198.19.60.1"),)]


def test_the_clients_own_sa_is_not_captured() -> None:
    pair = _connect(_pool(), "carol")
    with pytest.raises(SnapshotError, match="our own road-warrior SA"):
        to_dict(pair.initiator, pair.now)
