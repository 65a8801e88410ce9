"""A remote-access site for interop tests: a meshsec gateway (standalone agent, userspace data
plane) in front of a LAN with a server, and strongSwan 5.9.8 road warriors behind a masquerading
NAT box, each configured with the swanctl.conf profile `meshctl remote-access profile` renders
(meshctl/profiles/swanctl.py) and a device certificate the controller CA signed.

    rw0..rwN (198.18.73.10+i) -- rwlan -- nat (masquerade) -- inet -- gw 198.18.72.1
                                                                        |  198.19.50.1/24, lo 198.19.51.1
                                                                       srv 198.19.50.10
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from meshsec.controller.ca.authority import CertificateAuthority, load_csr
from meshsec.meshctl.profiles import swanctl
from meshsec.meshctl.profiles.model import DeviceCredentials, ProfileInput
from tests.harness.netns import Host, Lab, Switch
from tests.harness.strongswan import DEFAULT_PLUGINS, Charon, CharonFactory, CharonSettings, ConfValue
from tests.interop.meshsec_agent import MeshsecAgent

GW_OUTER, NAT_OUTER = "198.18.72.1", "198.18.72.2"
GW_LAN, SRV = "198.19.50.1", "198.19.50.10"
OUTSIDE_SPLIT = "198.19.51.1"  # on the gateway, but not in the pool's split routes
POOL = "198.19.60.0/24"
DNS = "198.19.50.53"
GW_ID = "gw.example.test"
CONNECTION = "meshsec-staff"
NOW = datetime.datetime.now(datetime.UTC)
YEAR = datetime.timedelta(days=365)


def _csr(cn: str) -> tuple[ec.EllipticCurvePrivateKey, x509.CertificateSigningRequest]:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .sign(key, hashes.SHA256())
    )
    return key, load_csr(csr.public_bytes(serialization.Encoding.PEM).decode(), cn)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@dataclass
class Site:
    lab: Lab
    gw: Host
    srv: Host
    rwlan: Switch
    ca: CertificateAuthority
    pki_dir: Path
    clients: list[Host] = field(default_factory=list)

    def device(self, user: str, device: str = "laptop") -> DeviceCredentials:
        key, csr = _csr(f"{device}.{user}")
        issued = self.ca.sign_device(csr, user, device, f"{user}@example.test", YEAR, NOW)
        return DeviceCredentials(x509.load_pem_x509_certificate(issued.certificate_pem.encode()), key)

    def client_host(self) -> Host:
        i = len(self.clients)
        host = self.lab.host(f"rw{i}")
        self.rwlan.attach(host, f"198.18.73.{10 + i}/24")
        host.add_route("default", via="198.18.73.1")
        self.clients.append(host)
        return host


def build(lab: Lab) -> Site:
    inet, rwlan = lab.switch("inet"), lab.switch("rwlan")
    gw, srv, nat = lab.router("gw"), lab.host("srv"), lab.router("nat")
    inet.attach(gw, f"{GW_OUTER}/24")
    inet.attach(nat, f"{NAT_OUTER}/24", ifname="outside")
    rwlan.attach(nat, "198.18.73.1/24", ifname="inside")
    nat.masquerade("outside")
    lab.link(gw, srv, f"{GW_LAN}/24", f"{SRV}/24", a_ifname="lan", b_ifname="eth0")
    srv.add_route("default", via=GW_LAN)
    gw.add_loopback_address(f"{OUTSIDE_SPLIT}/32")
    pki_dir = lab.workdir / "pki"
    pki_dir.mkdir(exist_ok=True)
    return Site(lab, gw, srv, rwlan, CertificateAuthority.create(), pki_dir)


def dual_stack(site: Site) -> None:
    """IPv6 on the gateway's LAN (2001:db8:50::/64) as well; the server reaches the pool via it."""
    site.gw.ip("-6", "addr", "add", "2001:db8:50::1/64", "dev", "lan", "nodad")
    site.srv.ip("-6", "addr", "add", "2001:db8:50::10/64", "dev", "eth0", "nodad")
    site.srv.ip("-6", "route", "add", "default", "via", "2001:db8:50::1")
    site.gw.sysctl("net.ipv6.conf.all.forwarding", "1")


def gateway_config(site: Site, *, addrs: str = POOL, **agent: Any) -> dict[str, Any]:
    """The standalone gateway: the controller CA's node certificate for GW_ID, clients' device
    certificates checked against the same CA, addresses from one pool, split route 198.19.50.0/24."""
    key, csr = _csr("gw1")
    issued = site.ca.sign_node(csr, "gw1", GW_ID, YEAR, NOW)
    files = {"gw.pem": issued.certificate_pem.encode(), "gw.key": _pem_key(key),
             "ca.pem": site.ca.certificate_pem.encode()}  # fmt: skip
    for name, data in files.items():
        (site.pki_dir / name).write_bytes(data)
        (site.pki_dir / name).chmod(0o600)
    return {
        "agent": {"dataplane": "userspace", "tun_name": "ms0", **agent},
        "pools": {"staff": {"addrs": [addrs], "dns": [DNS], "subnet": ["198.19.50.0/24"]}},
        "connections": {
            "rw": {
                "pools": ["staff"],
                "local": {
                    "id": GW_ID,
                    "auth": "pubkey",
                    "cert": str(site.pki_dir / "gw.pem"),
                    "key": str(site.pki_dir / "gw.key"),
                },
                "remote": {"auth": "pubkey", "cas": [str(site.pki_dir / "ca.pem")]},
                "children": {"rw": {"local_ts": ["198.19.50.0/24"], "esp_proposals": ["aes256gcm16-ecp384"]}},
            }
        },
    }


def profile(site: Site, user: str, routes: tuple[str, ...] = ("198.19.50.0/24",)) -> dict[str, bytes]:
    """What `meshctl remote-access profile USER laptop --out DIR` writes for a Linux device."""
    return swanctl.render(
        ProfileInput(
            name=CONNECTION,
            server=GW_OUTER,
            server_id=GW_ID,
            identity=f"{user}@example.test",
            auth="certificate",
            ca=site.ca.certificate,
            ike_proposals=("aes256gcm16-prfsha384-ecp384", "aes256gcm16-prfsha256-x25519"),
            esp_proposals=("aes256gcm16-ecp384",),
            routes=routes,
            credentials=site.device(user),
        )
    )


def road_warrior(
    site: Site, charons: CharonFactory, files: dict[str, bytes], *, timeout: float = 10.0,
    plugins: tuple[str, ...] = DEFAULT_PLUGINS,
) -> Charon:  # fmt: skip
    """A charon in a new host behind the NAT box with the profile loaded (not yet connected)."""
    host = site.client_host()
    # The resolve plugin writes the DNS servers of the CFG_REPLY to a file of the test's own (and
    # never runs the host's resolvconf). Few retransmits: a refused client gives up within the test.
    resolve: dict[str, ConfValue] = {
        "plugins.resolve.file": str(resolv_conf(host)),
        "plugins.resolve.resolvconf.path": str(site.lab.workdir / "no-resolvconf"),
    }
    settings = CharonSettings(plugins=(*plugins, "resolve"), retransmit_tries=2,
                              retransmit_timeout=2.0, extra=resolve)  # fmt: skip
    charon = charons.start(host, [], settings, timeout=timeout)
    for rel, data in files.items():
        path = charon.swanctl_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        if rel.startswith("private/"):
            path.chmod(0o600)
    charon.swanctl("--load-all", "--noprompt", timeout=max(30.0, timeout))
    return charon


def resolv_conf(host: Host) -> Path:
    return host.lab.workdir / f"resolv-{host.name}.conf"


def start_gateway(site: Site, config: dict[str, Any], *, timeout: float = 15.0) -> MeshsecAgent:
    return MeshsecAgent(site.gw, config, name="gateway").start(timeout=timeout)


def client_sa(charon: Charon) -> dict[str, Any] | None:
    for entry in charon.list_sas_raw():
        sa = entry.get(CONNECTION)
        if isinstance(sa, dict) and sa.get("state") == "ESTABLISHED" and sa.get("child-sas"):
            return sa
    return None
