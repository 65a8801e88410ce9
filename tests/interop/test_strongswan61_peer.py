"""The strongSwan 6.1 chroot peer itself (tests/harness/strongswan.py with root=pq_root()): two
6.1 charons negotiate the hybrid x25519 + ML-KEM-768 IKE SA (IKE_INTERMEDIATE, RFC 9370) and
carry ping; against Debian 12's 5.9.8, which has no ML-KEM, a hybrid-only proposal fails and one
with a classical fallback falls back. The later meshsec interop tests stand on these."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshsec.common.secrets import Secret
from tests.harness.netns import Lab
from tests.harness.strongswan import (
    Charon,
    CharonFactory,
    Child,
    Connection,
    IkeSa,
    Psk,
    SwanctlError,
)
from tests.interop.topology import (
    MS_ID,
    MS_INNER,
    MS_UNDER,
    PSK,
    SW_ID,
    SW_INNER,
    SW_UNDER,
    build,
    swan_settings,
)

pytestmark = [pytest.mark.netns, pytest.mark.strongswan, pytest.mark.timeout(120)]

HYBRID = "aes256gcm16-prfsha256-x25519-ke1_mlkem768"
CLASSIC = "aes256gcm16-prfsha256-x25519"


def _conn(proposals: tuple[str, ...], *, here: str, there: str) -> Connection:
    ms_side = here == "ms"
    under, peer_under = (MS_UNDER, SW_UNDER) if ms_side else (SW_UNDER, MS_UNDER)
    inner, peer_inner = (MS_INNER, SW_INNER) if ms_side else (SW_INNER, MS_INNER)
    me, peer = (MS_ID, SW_ID) if ms_side else (SW_ID, MS_ID)
    return Connection(
        name="peer", local_addrs=(under,), remote_addrs=(peer_under,), local_id=me, remote_id=peer,
        auth=Psk(Secret(PSK)), proposals=proposals,
        children=(Child("net", local_ts=(f"{inner}/32",), remote_ts=(f"{peer_inner}/32",)),),
    )  # fmt: skip


def _established(sas: list[IkeSa]) -> IkeSa | None:
    sa = next((s for s in sas if s.name == "peer" and s.state == "ESTABLISHED"), None)
    return sa if sa is not None and sa.child("net") is not None else None


def test_two_61_charons_negotiate_hybrid_mlkem768_and_carry_ping(
    lab: Lab, charons: CharonFactory, root: Path
) -> None:
    pair = build(lab)
    responder = charons.start(pair.sw, [_conn((HYBRID,), here="sw", there="ms")], swan_settings(), root=root)
    initiator = charons.start(pair.ms, [_conn((HYBRID,), here="ms", there="sw")], swan_settings(), root=root)
    initiator.initiate("peer", "net", timeout=15)
    sa = initiator.wait_for(_established)
    assert sa.dh_group == "CURVE_25519"
    assert sa.additional_ke == ("ML_KEM_768",)
    assert "IKE_INTERMEDIATE" in initiator.log_text()
    pair.ms.run(["ping", "-c", "3", "-i", "0.2", "-W", "2", "-I", MS_INNER, SW_INNER])
    assert responder.wait_for(_established).child("net") is not None


def _start_pq_and_legacy(
    lab: Lab, charons: CharonFactory, root: Path, proposals: tuple[str, ...]
) -> tuple[Charon, Charon]:
    pair = build(lab)
    legacy = charons.start(pair.sw, [_conn((CLASSIC,), here="sw", there="ms")], swan_settings())
    pq = charons.start(pair.ms, [_conn(proposals, here="ms", there="sw")], swan_settings(), root=root)
    return pq, legacy


def test_hybrid_only_against_598_fails_with_no_proposal_chosen(
    lab: Lab, charons: CharonFactory, root: Path
) -> None:
    pq, legacy = _start_pq_and_legacy(lab, charons, root, (HYBRID,))
    with pytest.raises(SwanctlError):
        pq.initiate("peer", "net", timeout=8)
    assert "NO_PROPOSAL_CHOSEN" in pq.log_text()
    assert legacy.list_sas() == []


def test_hybrid_with_classical_fallback_against_598_falls_back(
    lab: Lab, charons: CharonFactory, root: Path
) -> None:
    pq, legacy = _start_pq_and_legacy(lab, charons, root, (HYBRID, CLASSIC))
    pq.initiate("peer", "net", timeout=10)
    sa = pq.wait_for(_established)
    assert sa.dh_group == "CURVE_25519" and sa.additional_ke == ()
    assert legacy.wait_for(_established).dh_group == "CURVE_25519"
