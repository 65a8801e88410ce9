"""ML-KEM (FIPS 203) as an IKEv2 key exchange method (RFC 9370 additional key exchanges, Key
Exchange Method IDs 35/36/37 of draft-ietf-ipsecme-ikev2-mlkem).

A KEM is not symmetric like Diffie-Hellman: the initiator sends its encapsulation key, the
responder encapsulates a secret to it and answers with the ciphertext, and the initiator
decapsulates. The exchange code treats every key exchange through the same two calls
(`public_bytes`, `shared_secret`); an initiator calls them in that order and a responder the
other way round (it reads the peer's KE before it builds its own), so `MlKemExchange` takes its
role from the first call and refuses any order that does not fit it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import mlkem

from meshsec.agent.ike.constants import DhId
from meshsec.agent.ike.errors import CryptoError

SEED_SIZE = 64  # d | z of ML-KEM.KeyGen_internal (FIPS 203 algorithm 16)


class UnsupportedKem(ValueError):
    """The installed `cryptography`/OpenSSL cannot run this ML-KEM parameter set."""


@dataclass(frozen=True, slots=True)
class MlKemParams:
    level: int  # 512, 768 or 1024
    method: int
    ek_size: int  # bytes of the encapsulation key (initiator's KE data)
    ct_size: int  # bytes of the ciphertext (responder's KE data)

    @property
    def name(self) -> str:
        return f"ML-KEM-{self.level}"


ML_KEM: dict[int, MlKemParams] = {
    DhId.ML_KEM_512: MlKemParams(512, DhId.ML_KEM_512, 800, 768),
    DhId.ML_KEM_768: MlKemParams(768, DhId.ML_KEM_768, 1184, 1088),
    DhId.ML_KEM_1024: MlKemParams(1024, DhId.ML_KEM_1024, 1568, 1568),
}


def _key_classes(params: MlKemParams) -> tuple[Any, Any]:
    private = getattr(mlkem, f"MLKEM{params.level}PrivateKey", None)
    public = getattr(mlkem, f"MLKEM{params.level}PublicKey", None)
    if private is None or public is None:
        # cryptography 51 offers ML-KEM-768 and ML-KEM-1024 only.
        raise UnsupportedKem(f"{params.name} is not offered by the installed cryptography package")
    return private, public


@functools.cache
def check_supported(method: int) -> MlKemParams:
    """Raises UnsupportedKem, with the reason, unless this process can run `method` (the
    cryptography wheel and the OpenSSL it runs on both have to provide ML-KEM). The answer cannot
    change while the process runs, and the probe costs a key generation: it is asked once."""
    params = ML_KEM.get(method)
    if params is None:
        raise UnsupportedKem(f"key exchange method {method} is not an ML-KEM parameter set")
    private, _ = _key_classes(params)
    try:
        private.from_seed_bytes(bytes(SEED_SIZE))
    except UnsupportedAlgorithm as exc:
        raise UnsupportedKem(f"{params.name} is not supported by this OpenSSL backend: {exc}") from exc
    return params


def supported_methods() -> tuple[int, ...]:
    out = []
    for method in ML_KEM:
        try:
            check_supported(method)
        except UnsupportedKem:
            continue
        out.append(method)
    return tuple(out)


class MlKemExchange:
    """One ML-KEM key exchange, either role (see the module docstring)."""

    def __init__(self, method: int, seed: bytes) -> None:
        self._params = check_supported(method)
        if len(seed) != SEED_SIZE:
            raise ValueError(f"ML-KEM seed must be {SEED_SIZE} bytes")
        self.group = method
        self._seed = seed
        self._private: Any = None  # initiator: our decapsulation key
        self._ciphertext: bytes | None = None  # responder: what we answer with

    def public_bytes(self) -> bytes:
        if self._ciphertext is not None:
            return self._ciphertext
        if self._private is None:
            private_class, _ = _key_classes(self._params)
            self._private = private_class.from_seed_bytes(self._seed)
        return bytes(self._private.public_key().public_bytes_raw())

    def shared_secret(self, peer_public: bytes) -> bytes:
        if self._private is not None:
            return self._decapsulate(peer_public)
        if self._ciphertext is not None:
            raise CryptoError(f"{self._params.name}: one encapsulation per key exchange")
        return self._encapsulate(peer_public)

    def _encapsulate(self, ek: bytes) -> bytes:
        if len(ek) != self._params.ek_size:
            raise CryptoError(f"{self._params.name} encapsulation key must be {self._params.ek_size} bytes")
        _, public_class = _key_classes(self._params)
        try:
            # from_public_bytes runs the FIPS 203 7.2 modulus check on the key.
            shared, ciphertext = public_class.from_public_bytes(ek).encapsulate()
        except ValueError as exc:
            raise CryptoError(f"{self._params.name} encapsulation key is invalid") from exc
        self._ciphertext = bytes(ciphertext)
        return bytes(shared)

    def _decapsulate(self, ciphertext: bytes) -> bytes:
        if len(ciphertext) != self._params.ct_size:
            raise CryptoError(f"{self._params.name} ciphertext must be {self._params.ct_size} bytes")
        try:
            return bytes(self._private.decapsulate(ciphertext))
        except ValueError as exc:
            raise CryptoError(f"{self._params.name} ciphertext is invalid") from exc
