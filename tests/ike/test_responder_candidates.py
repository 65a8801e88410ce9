"""IKE_SA_INIT against many candidate connections (a mesh node has one per peer, nearly all with
the same proposals): each distinct proposal set is tried once, so an unauthenticated request
costs the responder work by distinct proposals, not by peers; the choice itself is unchanged."""

from __future__ import annotations

import pytest

from meshsec.agent.ike.features import key_exchange
from meshsec.agent.ike.payloads import Proposal
from meshsec.agent.ike.proposals import Chosen, ProposalSpec, select_proposal
from meshsec.agent.ike.random import DeterministicRandom
from meshsec.agent.ike.responder import Responder
from meshsec.agent.ike.sa import IkeSa
from meshsec.agent.ike.table import IkeSaTable

from .peers import I_ADDR, R_ADDR, ike_config, responder_config

PEERS = 500


@pytest.fixture
def selections(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the responder's proposal selections (the real function still decides)."""
    calls: list[int] = []

    def counted(ours: tuple[ProposalSpec, ...], theirs: tuple[Proposal, ...], **kw: bool) -> Chosen | None:
        calls.append(1)
        return select_proposal(ours, theirs, **kw)

    monkeypatch.setattr(key_exchange, "select_proposal", counted)
    return calls


def _init(proposals: str, seed: str) -> bytes:
    sa = IkeSa(ike_config(proposals=proposals), I_ADDR, R_ADDR, initiator=True, rnd=DeterministicRandom(seed))
    sa.initiate(0.0)
    (d,) = sa.datagrams_to_send()
    return d.data


def _table(last_proposals: str) -> IkeSaTable:
    configs = [responder_config(name=f"peer{n}", remote_id=f"peer{n}.example") for n in range(PEERS)]
    configs.append(responder_config(name="odd", proposals=last_proposals))
    return IkeSaTable(Responder(lambda local, remote: configs, rnd=DeterministicRandom("responder")))


def test_refused_init_tries_each_distinct_proposal_set_once(selections: list[int]) -> None:
    table = _table("aes256-sha384-ecp384")
    sa = table.receive(_init("aes128-sha256-modp2048", "refused"), R_ADDR, I_ADDR, 1.0)
    assert sa is not None and sa.closed
    assert len(selections) == 2  # the peers' shared set, then "odd"


def test_the_candidate_with_matching_proposals_is_still_found(selections: list[int]) -> None:
    table = _table("aes128-sha256-modp2048")
    sa = table.receive(_init("aes128-sha256-modp2048", "accepted"), R_ADDR, I_ADDR, 1.0)
    assert sa is not None and not sa.closed and sa.config.name == "odd"
    assert len(selections) == 2
