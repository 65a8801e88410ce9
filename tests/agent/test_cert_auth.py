"""Certificate authentication between meshsec agents with the controller CA's node certificates.

In namespaces, with a real controller (embedded store) and real agents on the userspace data
plane: a MeshPolicy with `auth: {method: certificate}` brings the tunnel up (ping passes) and the
agents' status shows the IKE SA authenticated by node certificates; a Node's IKE ID changed after
enrollment makes the agent renew its certificate early and the new IKE SA uses the renewed one;
a node whose certificate comes from another CA is refused with the reason in last_error.
Without namespaces: the translation of CertificateAuth into the engine's config, and what a
renewed certificate changes in the reconciler's plans.
"""

from __future__ import annotations

import dataclasses
import datetime
import re
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from meshsec.agent.node.convergence import without_ic
from meshsec.agent.node.reconciler import Reconciler
from meshsec.agent.node.translate import IdentityNotInCertificate, TunnelError, node_credentials, plan
from meshsec.common.secrets import Secret
from meshsec.meshctl.convert import dict_to_struct, struct_to_dict
from meshsec.v1 import admin_pb2, agent_pb2, common_pb2
from tests.agent.meshlab import MeshLab, resource, wait_for
from tests.harness.netns import Lab

CERT_POLICY = {"topology": "full-mesh", "scope": "site", "members": {}, "auth": {"method": "certificate"}}


# ---------------------------------------------------------------------- certificates for the tests


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_ca(cn: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def make_node_cert(
    ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey], node: str, dns: list[str]
) -> tuple[bytes, Secret]:
    """A node certificate shaped like the controller's (URI + DNS SANs), signed by `ca`."""
    ca_cert, ca_key = ca
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(f"meshsec://node/{node}")]
    sans += [x509.DNSName(d) for d in dns]
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(node))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM), Secret(key_pem)


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


# ---------------------------------------------------------------------- translation (no namespaces)


def cert_tunnel(local: str = "n1", bundle: str = "") -> agent_pb2.DesiredTunnel:
    t = agent_pb2.DesiredTunnel(tunnel_id="t1", initiator=True)
    t.local_id.CopyFrom(common_pb2.Identity(type=common_pb2.Identity.TYPE_FQDN, value=local))
    t.remote_id.CopyFrom(common_pb2.Identity(type=common_pb2.Identity.TYPE_FQDN, value="n2"))
    t.remote_endpoints.add(address="198.18.0.2")
    t.auth.certificate.ca_bundle_pem = bundle
    child = t.children.add(name="c")
    child.local_ts.add(cidr="198.19.1.0/24")
    child.remote_ts.add(cidr="198.19.2.0/24")
    return t


def test_certificate_auth_translates_to_the_node_credentials() -> None:
    ca = make_ca("test CA")
    cert, key = make_node_cert(ca, "n1", ["n1"])
    creds = node_credentials(cert, key, pem(ca[0]))
    p = plan(cert_tunnel(), creds)
    assert p.ike.psk is None and p.ike.credentials is creds
    assert p.ike.credentials.trusted == (ca[0],)
    other = make_ca("gateway CA")[0]
    overridden = plan(cert_tunnel(bundle=pem(other).decode()), creds).ike.credentials
    assert overridden is not None and overridden.trusted == (other,) and overridden.chain == creds.chain


def test_certificate_auth_without_a_usable_certificate_is_refused_with_the_reason() -> None:
    ca = make_ca("test CA")
    cert, key = make_node_cert(ca, "n1", ["n1"])
    creds = node_credentials(cert, key, pem(ca[0]))
    with pytest.raises(TunnelError, match="not enrolled yet"):
        plan(cert_tunnel(), None)
    with pytest.raises(
        IdentityNotInCertificate, match=re.escape("local ID @n1.example is not in the node certificate")
    ) as e:
        plan(cert_tunnel(local="n1.example"), creds)
    assert e.value.local_id == "@n1.example"
    with pytest.raises(TunnelError, match="ca_bundle_pem"):
        plan(cert_tunnel(bundle="garbage"), creds)


def test_a_renewed_certificate_is_for_new_ike_sas_and_a_missing_id_asks_for_one() -> None:
    ca = make_ca("test CA")
    first = node_credentials(*make_node_cert(ca, "n1", ["n1"]), pem(ca[0]))
    renewed = node_credentials(*make_node_cert(ca, "n1", ["n1"]), pem(ca[0]))
    # set_credentials/set_desired only plan; the adapter is first used by a reconcile pass.
    r = Reconciler(None)  # type: ignore[arg-type]
    r.set_credentials(first)
    r.set_desired({"t1": cert_tunnel()}, 1)
    established = r.plans["t1"].ike
    assert established.credentials is first and not r.missing_ids
    r.set_credentials(renewed)
    desired = r.plans["t1"].ike
    assert desired.credentials is renewed  # the next IKE SA signs with the renewed certificate
    assert without_ic(established, desired) == established  # the established SA is kept
    other = dataclasses.replace(renewed, trusted=(make_ca("other CA")[0],))
    changed = dataclasses.replace(desired, credentials=other)
    assert without_ic(established, changed) != established  # new trust anchors replace it
    r.set_desired({"t1": cert_tunnel(local="n1.example")}, 2)
    assert r.missing_ids == {"@n1.example"} and "not in the node certificate" in r.invalid["t1"]


# ---------------------------------------------------------------------- namespaces


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[MeshLab]:
    with Lab(prefix="ac-", workdir=tmp_path) as lab:
        m = MeshLab(lab)
        m.start_controller()
        m.apply(resource("MeshPolicy", "certs", CERT_POLICY))
        yield m


def tunnel_doc(m: MeshLab, name: str) -> dict[str, Any]:
    tunnels = m.status(name)["tunnels"]
    assert len(tunnels) == 1, tunnels
    return dict(tunnels[0])


def cert_serial(path: Path) -> str:
    return f"{x509.load_pem_x509_certificate(path.read_bytes()).serial_number:x}"


def established_with_certificate(m: MeshLab, name: str, serial: str | None = None) -> bool:
    auth = tunnel_doc(m, name)["auth"] or {}
    return bool(
        auth.get("method") == "certificate"
        and auth.get("established")
        and (serial is None or auth.get("certificate_serial") == serial)
    )


def controller_established(m: MeshLab) -> bool:
    tunnels = m.tunnels()
    return bool(tunnels) and all(t.state == common_pb2.TUNNEL_STATE_ESTABLISHED for t in tunnels)


@pytest.mark.netns
@pytest.mark.timeout(150)
def test_certificate_mesh_comes_up_and_follows_a_renewed_certificate(mesh: MeshLab) -> None:
    for n in (1, 2):
        mesh.add_node(n)
    mesh.wait_mesh(timeout=40)
    for name in ("n1", "n2"):
        serial = cert_serial(mesh.state_dir(name) / "node.crt")
        auth = tunnel_doc(mesh, name)["auth"]
        assert auth["method"] == "certificate" and auth["established"], auth
        assert auth["certificate_serial"] == serial and auth["certificate_subject"] == f"CN={name},O=meshsec"
        assert auth["trusted_cas"] == ["CN=meshsec controller CA,O=meshsec"]
    log = (mesh.work / "n1.log").read_text()
    assert "authenticated by certificates" in log
    wait_for("the controller to see the tunnel established", lambda: controller_established(mesh), 20)

    # The Node's IKE ID changes after enrollment: n1's certificate does not name it, so n1 asks
    # for a renewed one, and the new IKE SA (the tunnel's IDs changed) is made with it.
    old = cert_serial(mesh.state_dir("n1") / "node.crt")
    channel, stub = mesh.admin()
    with channel:
        node = stub.Get(admin_pb2.GetRequest(kind="Node", name="n1"), timeout=10).resource
    changed = common_pb2.Resource()
    changed.CopyFrom(node)  # labels (role: gateway) and endpoints stay
    changed.spec.CopyFrom(
        dict_to_struct({**struct_to_dict(node.spec), "identity": {"ikeId": "n1.meshsec.test"}})
    )
    mesh.apply(changed)
    renewed = wait_for(
        "n1 to renew its certificate",
        lambda: (s := cert_serial(mesh.state_dir("n1") / "node.crt")) != old and s,
        30,
    )
    wait_for(
        "a tunnel authenticated with the renewed certificate",
        lambda: established_with_certificate(mesh, "n1", renewed) and mesh.ping("n1", "n2", count=1),
        40,
    )
    san = x509.load_pem_x509_certificate((mesh.state_dir("n1") / "node.crt").read_bytes()).extensions
    dns = san.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    assert "n1.meshsec.test" in dns
    assert mesh.ping("n2", "n1")


@pytest.mark.netns
@pytest.mark.timeout(150)
def test_a_certificate_from_another_ca_is_refused_with_the_reason(mesh: MeshLab) -> None:
    for n in (1, 2):
        mesh.add_node(n)
    mesh.wait_mesh(timeout=40)  # both have their desired state persisted now
    for name in ("n1", "n2"):
        mesh.stop_agent(name, signal.SIGTERM)
        # A restart resumes the IKE SAs it saved (the data-plane daemon kept their CHILD_SAs), and a
        # resumed SA is not authenticated again: without the state file both authenticate anew.
        (mesh.state_dir(name) / "ike-sas.json").unlink(missing_ok=True)
    # n2 gets a certificate with the right names, but from a CA the controller never heard of.
    cert, key = make_node_cert(make_ca("rogue CA"), "n2", ["n2"])
    (mesh.state_dir("n2") / "node.crt").write_bytes(cert)
    (mesh.state_dir("n2") / "node.key").write_bytes(key.reveal())
    for name in ("n1", "n2"):
        mesh.start_agent(name)

    def refused() -> str | None:
        error = tunnel_doc(mesh, "n1")["last_error"]
        return error if error and "does not chain to a trusted CA" in error else None

    error = wait_for("n1 to refuse n2's certificate", refused, 40)
    assert "CN=n2" in error
    assert tunnel_doc(mesh, "n1")["state"] != "ESTABLISHED"
    assert not mesh.ping("n1", "n2", count=1)
    n2_error = wait_for("n2 to learn of the refusal", lambda: tunnel_doc(mesh, "n2")["last_error"], 30)
    assert "AUTHENTICATION_FAILED" in n2_error or "does not chain" in n2_error
