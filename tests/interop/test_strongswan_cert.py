"""Certificate authentication against real strongSwan 5.9.8 in namespaces: ECDSA and RSA
certificates from a test CA in both roles (RFC 7427 signatures, which strongSwan chooses once
meshsec announces SIGNATURE_HASH_ALGORITHMS, and classic ECDSA), traffic through the CHILD_SA,
and unacceptable certificates failing with a clear reason on the rejecting side."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.harness.netns import Lab
from tests.harness.strongswan import CertAuth, CharonFactory, Connection, IkeSa
from tests.ike.pki import Authority, key_pem, pem
from tests.interop.meshsec_agent import MeshsecAgent
from tests.interop.topology import (
    MS_ID,
    MS_INNER,
    MS_UNDER,
    SUITES,
    SW_ID,
    SW_INNER,
    SW_UNDER,
    Pair,
    build,
    meshsec_config,
    swan_connection,
    swan_settings,
)

pytestmark = [pytest.mark.netns, pytest.mark.strongswan, pytest.mark.timeout(60)]

NOW = datetime.datetime.now(datetime.UTC)
DAY = datetime.timedelta(days=1)


@pytest.fixture
def netns_prefix() -> str:
    return "ik2-"


def _swan_established(sas: list[IkeSa]) -> IkeSa | None:
    for sa in sas:
        child = sa.child("net")
        if sa.state == "ESTABLISHED" and child is not None and child.state == "INSTALLED":
            return sa
    return None


def _write(dirpath: Path, name: str, data: bytes) -> Path:
    path = dirpath / name
    path.write_bytes(data)
    path.chmod(0o600)
    return path


class Pki:
    """The CA and the two end entities' files, in the lab's work directory."""

    def __init__(self, workdir: Path, kind: str) -> None:
        self.dir = workdir / "pki"
        self.dir.mkdir(exist_ok=True)
        self.kind = kind
        self.ca = Authority.root("interop CA", kind="rsa" if kind == "rsa" else "ecdsa256")
        self.ca_path = _write(self.dir, "ca.pem", pem(self.ca.cert))

    def leaf(
        self, name: str, ident: str, *, ca: Authority | None = None,
        not_before: datetime.datetime | None = None, not_after: datetime.datetime | None = None,
    ) -> tuple[Path, Path]:  # fmt: skip
        issuer = ca or self.ca
        cert, key = issuer.issue(ident, self.kind, not_before=not_before or NOW - DAY,
                                 not_after=not_after or NOW + 30 * DAY)  # fmt: skip
        cert_path = _write(self.dir, f"{name}.pem", pem(cert))
        return cert_path, _write(self.dir, f"{name}.key", key_pem(key).reveal())


def _meshsec_config(role: str, cert: Path, key: Path, ca: Path, method: str = "signature") -> dict[str, Any]:
    """`method`: signature (RFC 7427), pss (RFC 7427 with RSA-PSS) or classic."""
    ike, esp, _, _ = SUITES["gcm-x25519"]
    config = meshsec_config(ike, esp, start_action="initiate" if role == "initiator" else "wait",
                            dataplane="userspace")  # fmt: skip
    conn = config["connections"]["peer"]
    del conn["psk"]
    conn["local"] = {
        "id": MS_ID,
        "auth": "pubkey",
        "cert": str(cert),
        "key": str(key),
        "method": "classic" if method == "classic" else "signature",
        "rsa_pss": method == "pss",
    }
    conn["remote"] = {"id": SW_ID, "auth": "pubkey", "cas": [str(ca)]}
    return config


def _swan(cert: Path, key: Path, ca: Path) -> Connection:
    ike, esp, _, _ = SUITES["gcm-x25519"]
    conn = swan_connection(ike, esp)
    return Connection(**{**conn.__dict__, "auth": CertAuth(cert, key, ca)})


def _start(lab: Lab, charons: CharonFactory, role: str, config: dict[str, Any], swan: Connection,
           pair: Any = None) -> tuple[MeshsecAgent, Any, Any]:  # fmt: skip
    pair = pair or build(lab)
    if role == "initiator":
        sw = charons.start(pair.sw, [swan], swan_settings())
        agent = MeshsecAgent(pair.ms, config).start()
    else:
        agent = MeshsecAgent(pair.ms, config).start()
        sw = charons.start(pair.sw, [swan], swan_settings())
        sw.swanctl("--initiate", "--ike", "peer", "--child", "net", "--timeout", "10", check=False)
    return agent, sw, pair


@pytest.mark.parametrize("role", ["initiator", "responder"])
@pytest.mark.parametrize(
    ("kind", "method", "scheme"),
    [
        ("ecdsa256", "signature", "ECDSA_WITH_SHA256_DER"),  # RFC 7427
        ("rsa", "signature", "RSA_EMSA_PKCS1_SHA2_256"),  # RFC 7427
        ("rsa", "pss", "RSA_EMSA_PSS"),  # RFC 7427
        ("ecdsa256", "classic", "ECDSA-256 signature"),  # AUTH method 9
    ],
)
def test_certificate_auth_both_roles(lab: Lab, charons: CharonFactory, role: str, kind: str, method: str,
                                     scheme: str) -> None:  # fmt: skip
    pki = Pki(lab.workdir, kind)
    ms_cert, ms_key = pki.leaf("meshsec", MS_ID)
    sw_cert, sw_key = pki.leaf("strongswan", SW_ID)
    agent, sw, pair = _start(lab, charons, role, _meshsec_config(role, ms_cert, ms_key, pki.ca_path, method),
                             _swan(sw_cert, sw_key, pki.ca_path))  # fmt: skip
    ms_sa = agent.wait_for(lambda s: agent.established("peer"))
    sw_sa = sw.wait_for(_swan_established)
    assert (ms_sa["initiator_spi"], ms_sa["responder_spi"]) == (sw_sa.initiator_spi, sw_sa.responder_spi)
    assert (sw_sa.local_id, sw_sa.remote_id) == (SW_ID, MS_ID)
    ping = pair.ms.ping(SW_INNER, src=MS_INNER, count=5, interval=0.05)
    assert ping.ok, ping
    # strongSwan verified meshsec's signature with the key of meshsec's certificate.
    assert f"authentication of '{MS_ID}' with {scheme}" in sw.log_text(), sw.log_text()[-3000:]


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("expired", "expired at"),
        ("not-yet-valid", "is not valid before"),
        ("wrong-ca", "does not chain to a trusted CA"),
        ("wrong-id", "is not in certificate"),
    ],
)
def test_bad_strongswan_certificate_is_refused_with_a_clear_reason(
    lab: Lab, charons: CharonFactory, case: str, reason: str
) -> None:
    pki = Pki(lab.workdir, "ecdsa256")
    ms_cert, ms_key = pki.leaf("meshsec", MS_ID)
    if case == "expired":
        sw_cert, sw_key = pki.leaf("strongswan", SW_ID, not_before=NOW - 30 * DAY, not_after=NOW - DAY)
    elif case == "not-yet-valid":
        sw_cert, sw_key = pki.leaf("strongswan", SW_ID, not_before=NOW + DAY, not_after=NOW + 30 * DAY)
    elif case == "wrong-ca":
        sw_cert, sw_key = pki.leaf("strongswan", SW_ID, ca=Authority.root("rogue CA"))
    else:
        sw_cert, sw_key = pki.leaf("strongswan", "mallory.test")
    # For wrong-id strongSwan still claims strongswan.test, with a certificate for mallory.test.
    swan = _swan(sw_cert, sw_key, pki.ca_path)
    config = _meshsec_config("initiator", ms_cert, ms_key, pki.ca_path)
    agent, sw, _ = _start(lab, charons, "initiator", config, swan)
    agent.wait_for(lambda s: "FAILED" in agent.log_text(), timeout=15)
    log = agent.log_text()
    assert reason in log, log[-3000:]
    assert agent.established("peer") is None
    # The refusal went on the wire: strongSwan parses our INFORMATIONAL with N(AUTH_FAILED).
    assert sw.wait_for(lambda sas: "N(AUTH_FAILED)" in sw.log_text() or None, timeout=10)


def test_expired_meshsec_certificate_is_refused_by_strongswan(lab: Lab, charons: CharonFactory) -> None:
    pki = Pki(lab.workdir, "ecdsa256")
    ms_cert, ms_key = pki.leaf("meshsec", MS_ID, not_before=NOW - 30 * DAY, not_after=NOW - DAY)
    sw_cert, sw_key = pki.leaf("strongswan", SW_ID)
    config = _meshsec_config("initiator", ms_cert, ms_key, pki.ca_path)
    agent, sw, _ = _start(lab, charons, "initiator", config, _swan(sw_cert, sw_key, pki.ca_path))
    agent.wait_for(lambda s: "FAILED" in agent.log_text(), timeout=15)
    assert "peer reported AUTHENTICATION_FAILED" in agent.log_text()
    assert "subject certificate invalid" in sw.log_text(), sw.log_text()[-3000:]
    assert "IKE_AUTH response 1 [ N(AUTH_FAILED) ]" in sw.log_text()


DROP_IP_FRAGMENTS = """
table inet ik2frag {
    chain pre {
        type filter hook prerouting priority -450; policy accept;
        ip frag-off & 0x3fff != 0 counter drop
    }
}
"""


@pytest.mark.parametrize("fragmentation", [True, False])
def test_rsa_certificates_over_a_path_that_drops_ip_fragments(lab: Lab, charons: CharonFactory,
                                                              fragmentation: bool) -> None:  # fmt: skip
    """A 1280-byte MTU path that drops IP fragments (as many firewalls do): RSA certificate
    exchanges only get through as RFC 7383 fragments. With meshsec's fragmentation switched
    off the same exchange must fail, which shows the path really drops them."""
    ms, sw_host = lab.host("ms"), lab.host("sw")
    lab.link(ms, sw_host, f"{MS_UNDER}/24", f"{SW_UNDER}/24", mtu=1280)
    ms.add_loopback_address(f"{MS_INNER}/32")
    sw_host.add_loopback_address(f"{SW_INNER}/32")
    for host in (ms, sw_host):
        host.nft(DROP_IP_FRAGMENTS)
    pki = Pki(lab.workdir, "rsa")
    ms_cert, ms_key = pki.leaf("meshsec", MS_ID)
    sw_cert, sw_key = pki.leaf("strongswan", SW_ID)
    config = _meshsec_config("initiator", ms_cert, ms_key, pki.ca_path)
    config["connections"]["peer"]["fragmentation"] = fragmentation
    pair = Pair(lab, ms, sw_host)
    agent, sw, _ = _start(lab, charons, "initiator", config, _swan(sw_cert, sw_key, pki.ca_path), pair)
    if fragmentation:
        agent.wait_for(lambda s: agent.established("peer"))
        sw.wait_for(_swan_established)
        assert "received fragment #" in sw.log_text()  # strongSwan reassembled ours
        assert ms.ping(SW_INNER, src=MS_INNER, count=3, interval=0.05).ok
    else:
        agent.wait_for(lambda s: "FAILED" in agent.log_text(), timeout=20)
        assert "IKE_AUTH: peer not responding" in agent.log_text()
