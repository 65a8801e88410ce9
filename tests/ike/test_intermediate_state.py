"""agent/ike/intermediate.py: the two ends of IKE_INTERMEDIATE additional key exchanges agree."""

from __future__ import annotations

import pytest

from meshsec.agent.ike.constants import DhId, TransformType
from meshsec.agent.ike.crypto import PRFS, AesGcm16, default_dh_factory
from meshsec.agent.ike.intermediate import AdditionalExchanges, IntermediateError, SaContext, encode_inner
from meshsec.agent.ike.keys import derive_ike_keys
from meshsec.agent.ike.payloads import KePayload, NoncePayload
from meshsec.agent.ike.random import DeterministicRandom

KE1, KE2 = TransformType.ADDKE1, TransformType.ADDKE2
CTX = SaContext(PRFS[5](), AesGcm16(256), None, b"n" * 32, b"m" * 32, b"I" * 8, b"R" * 8)


def _start() -> tuple[AdditionalExchanges, AdditionalExchanges]:
    plan = [(KE1, DhId.ML_KEM_768), (KE2, DhId.ML_KEM_1024)]
    return AdditionalExchanges(list(plan)), AdditionalExchanges(list(plan))


def test_both_ends_reach_the_same_keys_and_intauth() -> None:
    keys_i = keys_r = derive_ike_keys(CTX.prf, CTX.cipher, None, CTX.nonce_i, CTX.nonce_r, b"g" * 32,
                                      CTX.spi_i, CTX.spi_r)  # fmt: skip
    ini, rsp = _start()
    rnd_i, rnd_r = DeterministicRandom("i"), DeterministicRandom("r")
    seen = [keys_i.sk_d.reveal()]
    for mid in (1, 2):
        request = ini.request(default_dh_factory(ini.next_method, rnd_i))
        response, shared_r = rsp.answer(request, default_dh_factory, rnd_r)
        shared_i = ini.response(response)
        assert shared_i == shared_r
        keys_i = ini.complete(CTX, keys_i, shared_i, mid, encode_inner(request), encode_inner(response))
        keys_r = rsp.complete(CTX, keys_r, shared_r, mid, encode_inner(request), encode_inner(response))
        assert keys_i == keys_r
        seen.append(keys_i.sk_d.reveal())
    assert len(set(seen)) == 3  # every exchange moved the keys on
    assert ini.finished and rsp.finished
    assert ini.auth_octets() == rsp.auth_octets() and ini.auth_octets()[-4:] == b"\0\0\0\3"
    assert len(ini.auth_octets()) == 32 + 32 + 4


def test_a_ke_of_another_method_is_refused() -> None:
    _, rsp = _start()
    bogus = [KePayload(DhId.ML_KEM_1024, b"\0" * 1568)]
    with pytest.raises(IntermediateError, match="expected 36"):
        rsp.answer(bogus, default_dh_factory, DeterministicRandom("r"))
    with pytest.raises(IntermediateError, match="exactly one KE"):
        rsp.answer([NoncePayload(b"x" * 32)], default_dh_factory, DeterministicRandom("r"))


def test_no_exchange_beyond_the_negotiated_ones() -> None:
    rsp = AdditionalExchanges([])
    with pytest.raises(IntermediateError, match="beyond the negotiated"):
        rsp.answer([KePayload(DhId.ML_KEM_768, b"")], default_dh_factory, DeterministicRandom("r"))
    with pytest.raises(IntermediateError, match="without a request"):
        AdditionalExchanges([(KE1, DhId.ML_KEM_768)]).response([])
