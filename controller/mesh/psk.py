"""Per-pair pre-shared keys derived from one controller secret, so replicas agree without storing keys.

PSK = HKDF-SHA256(IKM = controller secret, salt = "meshsec-psk-v1", info = psk id), 32 bytes
(256 bits). The psk id (``<tunnel id>.g<generation>``) names the pair, the policy and the
rotation generation, so bumping ``spec.auth.pskGeneration`` yields fresh keys for every pair
and no key is ever shared between two pairs.
"""

from __future__ import annotations

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from meshsec.common.secrets import Secret

PSK_BYTES = 32
MIN_MASTER_BYTES = 32
_SALT = b"meshsec-psk-v1"


def derive_pair_psk(master: Secret, psk_id: str) -> Secret:
    if len(master) < MIN_MASTER_BYTES:
        raise ValueError(f"controller PSK secret must have at least {MIN_MASTER_BYTES} bytes")
    if not psk_id.startswith("t-"):
        raise ValueError(f"{psk_id!r} is not a derived mesh PSK id (external PSKs live in Secrets)")
    hkdf = HKDF(algorithm=hashes.SHA256(), length=PSK_BYTES, salt=_SALT, info=psk_id.encode())
    return Secret(hkdf.derive(master.reveal()))
