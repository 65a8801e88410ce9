"""ML-KEM glue (agent/ike/kem.py): NIST ACVP known answers and the IKE roles.

The vectors in data/mlkem_acvp.json are a handful of NIST ACVP-Server test cases (gen-val
json-files v1.1.0.40, ML-KEM-keyGen-FIPS203 and ML-KEM-encapDecap-FIPS203, copied from the
mirror in pq-code-package/mlkem-native test/acvp_data/); the file names its source. The ACVP
encapsulation cases fix the message m and the decapsulation cases give the expanded key, and
`cryptography` takes neither (it encapsulates with its own randomness and loads private keys
from the 64-byte seed only), so the known answers used here are key generation from the seed
and the encapsulation key check of FIPS 203 7.2.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from meshsec.agent.ike.config import ConfigError
from meshsec.agent.ike.constants import DhId
from meshsec.agent.ike.crypto import CryptoError, default_dh_factory
from meshsec.agent.ike.events import ChildSaEstablished, IkeSaEstablished
from meshsec.agent.ike.kem import ML_KEM, MlKemExchange, UnsupportedKem, check_supported, supported_methods
from meshsec.agent.ike.random import DeterministicRandom
from tests.ike.peers import Pair, child, ike_config, of_type, responder_config

_VECTORS: dict[str, Any] = json.loads((Path(__file__).parent / "data" / "mlkem_acvp.json").read_text())
_BY_NAME = {p.name: p.method for p in ML_KEM.values()}


def _vectors(kind: str) -> list[dict[str, Any]]:
    return list(_VECTORS[kind])


def test_the_vectors_name_their_source() -> None:
    assert "ACVP" in _VECTORS["source"] and "v1.1.0.40" in _VECTORS["source"]


@pytest.mark.parametrize("case", _vectors("keyGen"), ids=lambda c: f"{c['parameterSet']}-tc{c['tcId']}")
def test_acvp_keygen_from_seed_gives_the_expected_encapsulation_key(case: dict[str, Any]) -> None:
    method = _BY_NAME[case["parameterSet"]]
    seed = bytes.fromhex(case["d"]) + bytes.fromhex(case["z"])
    # Our initiator's KE data is the encapsulation key of ML-KEM.KeyGen_internal(d, z).
    assert MlKemExchange(method, seed).public_bytes() == bytes.fromhex(case["ek"])


@pytest.mark.parametrize(
    "case", _vectors("encapsulationKeyCheck"), ids=lambda c: f"{c['parameterSet']}-tc{c['tcId']}"
)
def test_acvp_encapsulation_key_check(case: dict[str, Any]) -> None:
    responder = MlKemExchange(_BY_NAME[case["parameterSet"]], bytes(64))
    ek = bytes.fromhex(case["ek"])
    if case["testPassed"]:
        assert len(responder.shared_secret(ek)) == 32
    else:
        with pytest.raises(CryptoError):  # these ACVP cases fail on the key's length
            responder.shared_secret(ek)


@pytest.mark.parametrize("method", [DhId.ML_KEM_768, DhId.ML_KEM_1024])
def test_a_right_sized_key_with_a_coefficient_of_q_fails_the_modulus_check(method: int) -> None:
    ek = bytearray(MlKemExchange(method, bytes(range(64))).public_bytes())
    # The first 12-bit coefficient becomes q = 3329 = 0xD01 (FIPS 203 7.2, ByteDecode_12).
    ek[0] = 0x01
    ek[1] = (ek[1] & 0xF0) | 0x0D
    with pytest.raises(CryptoError, match="invalid"):
        MlKemExchange(method, bytes(64)).shared_secret(bytes(ek))


def test_the_acvp_set_has_both_outcomes() -> None:
    # A check that only ever saw valid keys could not fail on a missing modulus check.
    outcomes = {(c["parameterSet"], c["testPassed"]) for c in _vectors("encapsulationKeyCheck")}
    assert outcomes == {(p, ok) for p in ("ML-KEM-768", "ML-KEM-1024") for ok in (True, False)}


@pytest.mark.parametrize("method", [DhId.ML_KEM_768, DhId.ML_KEM_1024])
def test_initiator_and_responder_agree_through_the_dh_factory(method: int) -> None:
    initiator = default_dh_factory(method, DeterministicRandom("i"))
    responder = default_dh_factory(method, DeterministicRandom("r"))
    ek = initiator.public_bytes()
    shared_r = responder.shared_secret(ek)
    ct = responder.public_bytes()
    assert (len(ek), len(ct)) == (ML_KEM[method].ek_size, ML_KEM[method].ct_size)
    assert initiator.shared_secret(ct) == shared_r


def test_a_tampered_ciphertext_gives_another_secret_not_an_error() -> None:
    # Implicit rejection (FIPS 203 6.3): the IKE SA then fails at AUTH, not here.
    initiator = MlKemExchange(DhId.ML_KEM_768, bytes(range(64)))
    responder = MlKemExchange(DhId.ML_KEM_768, bytes(64))
    shared = responder.shared_secret(initiator.public_bytes())
    ct = bytearray(responder.public_bytes())
    ct[0] ^= 1
    assert initiator.shared_secret(bytes(ct)) != shared


@pytest.mark.parametrize("method", [DhId.ML_KEM_768, DhId.ML_KEM_1024])
def test_wrong_lengths_are_refused(method: int) -> None:
    initiator = MlKemExchange(method, bytes(64))
    ek = initiator.public_bytes()
    with pytest.raises(CryptoError, match="ciphertext must be"):
        initiator.shared_secret(b"\0" * 32)
    with pytest.raises(CryptoError, match="encapsulation key must be"):
        MlKemExchange(method, bytes(64)).shared_secret(ek[:-1])


def test_a_responder_encapsulates_once() -> None:
    ek = MlKemExchange(DhId.ML_KEM_768, bytes(64)).public_bytes()
    responder = MlKemExchange(DhId.ML_KEM_768, bytes(64))
    responder.shared_secret(ek)
    with pytest.raises(CryptoError, match="one encapsulation"):
        responder.shared_secret(ek)


def test_mlkem_512_fails_with_a_clear_error_when_the_backend_lacks_it() -> None:
    if DhId.ML_KEM_512 in supported_methods():
        pytest.skip("this cryptography build has ML-KEM-512")
    with pytest.raises(UnsupportedKem, match="ML-KEM-512 is not offered by the installed cryptography"):
        check_supported(DhId.ML_KEM_512)
    with pytest.raises(UnsupportedKem):
        default_dh_factory(DhId.ML_KEM_512, DeterministicRandom("x"))


def test_768_and_1024_are_supported_here() -> None:
    assert {DhId.ML_KEM_768, DhId.ML_KEM_1024} <= set(supported_methods())


@pytest.mark.parametrize("method", ["mlkem768", "mlkem1024"])
def test_mlkem_as_the_ike_sa_init_key_exchange_establishes(method: str) -> None:
    # The exchange code calls public_bytes/shared_secret in DH order; ML-KEM takes its role from
    # that order (initiator: ek then decapsulate, responder: encapsulate then ciphertext).
    proposal = f"aes256gcm16-prfsha256-{method}"
    p = Pair(ike_config(proposals=proposal), [responder_config(proposals=proposal)])
    p.connect()
    (est_i,) = of_type(p.events_i, IkeSaEstablished)
    (est_r,) = of_type(p.events_r, IkeSaEstablished)
    assert est_i.algorithms.dh == est_r.algorithms.dh == _BY_NAME[f"ML-KEM-{method[5:]}"]
    assert len(of_type(p.events_i, ChildSaEstablished)) == 1


def test_config_refuses_what_this_process_cannot_run() -> None:
    with pytest.raises(ConfigError, match="ML-KEM-512 is not offered"):
        ike_config(proposals="aes256gcm16-prfsha256-mlkem512")
    with pytest.raises(ConfigError, match="ML-KEM-512 is not offered"):
        ike_config(children=(child(proposals="aes256gcm16-x25519-ke1_mlkem512"),))
    ike_config(proposals="aes256gcm16-prfsha256-x25519-ke1_mlkem768")  # IKE_INTERMEDIATE
    ike_config(children=(child(proposals="aes256gcm16-x25519-ke1_mlkem768"),))  # IKE_FOLLOWUP_KE
