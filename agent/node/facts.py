"""What the agent reports about its host: usable addresses, data-plane capabilities, versions."""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import subprocess

from meshsec.agent.dataplane.api import Capabilities
from meshsec.common.version import VERSION
from meshsec.v1 import agent_pb2, common_pb2

AGENT_VERSION = VERSION
USERSPACE_ENCRYPTION = ("aes128gcm16", "aes256gcm16", "chacha20poly1305", "aes128", "aes256")
USERSPACE_INTEGRITY = ("sha256", "sha384", "sha512")


# Interfaces whose addresses are never underlay endpoints: container and CNI bridges, veth
# ends, overlay and tunnel devices, kube-proxy's IPVS dummy (it holds every ClusterIP), and our
# own TUN. On a Kubernetes node the operator declares the endpoints from the Node's addresses;
# these are only what the agent reports when nothing declared them.
VIRTUAL_INTERFACE_PREFIXES = (
    "cni", "docker", "kube-ipvs", "kube-bridge", "veth", "flannel", "cilium_", "lxc", "vxlan",
    "geneve", "genev_sys", "tunl", "cali", "weave", "br-", "virbr", "nodelocaldns", "meshsec",
)  # fmt: skip


def virtual_interface(name: str) -> bool:
    return name.startswith(VIRTUAL_INTERFACE_PREFIXES)


def encryption_names(caps: Capabilities) -> list[str]:
    """The ESP ciphers the chosen backend runs: a kernel without an AEAD's template (probed by
    the backend) does not get to advertise it."""
    missing = set()
    if not caps.aead_gcm:
        missing |= {"aes128gcm16", "aes256gcm16"}
    if not caps.aead_chacha20poly1305:
        missing.add("chacha20poly1305")
    return [name for name in USERSPACE_ENCRYPTION if name not in missing]


def local_addresses() -> list[str]:
    """Global-scope addresses on physical-looking interfaces: not loopback (`lo` holds inner
    /32s, which are traffic addresses, not IKE endpoints), not `VIRTUAL_INTERFACE_PREFIXES`.
    Empty, never an exception, when `ip` is missing or says nothing readable."""
    try:
        out = subprocess.run(
            ["ip", "-j", "addr", "show"], capture_output=True, text=True, check=False, timeout=10
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    try:
        links = json.loads(out or "[]")
    except ValueError:
        return []
    found: list[str] = []
    for link in links if isinstance(links, list) else []:
        if link.get("ifname") == "lo" or "LOOPBACK" in link.get("flags", []):
            continue
        if virtual_interface(str(link.get("ifname", ""))):
            continue
        for info in link.get("addr_info", []):
            if info.get("scope") != "global":
                continue
            try:
                addr = ipaddress.ip_address(info["local"])
            except (KeyError, ValueError):
                continue
            if not (addr.is_loopback or addr.is_link_local):
                found.append(str(addr))
    return found


def node_facts(
    addresses: list[str], caps: Capabilities | None, kernel_esp: bool | None = None
) -> agent_pb2.NodeFacts:
    facts = agent_pb2.NodeFacts(
        addresses=[common_pb2.Endpoint(address=a, scope=common_pb2.ADDRESS_SCOPE_PRIVATE) for a in addresses],
        agent_version=AGENT_VERSION,
        hostname=socket.gethostname(),
        kernel_version=os.uname().release,
    )
    if caps is not None:
        c = facts.capabilities
        c.kernel_esp = caps.esp if caps.backend == "kernel" else bool(kernel_esp)
        c.kernel_ah = caps.ah if caps.backend == "kernel" else False
        c.userspace = caps.backend == "userspace" or os.path.exists("/dev/net/tun")
        c.modes.extend([common_pb2.MODE_TUNNEL, common_pb2.MODE_TRANSPORT])
        c.protocols.append(common_pb2.IPSEC_PROTOCOL_ESP)
        if caps.ah:
            c.protocols.append(common_pb2.IPSEC_PROTOCOL_AH)
        c.encryption_algorithms.extend(encryption_names(caps))
        c.integrity_algorithms.extend(USERSPACE_INTEGRITY)
        c.udp_encapsulation = caps.udp_encapsulation
    return facts
