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
USERSPACE_ENCRYPTION = ("aes128gcm16", "aes256gcm16", "aes128", "aes256")
USERSPACE_INTEGRITY = ("sha256", "sha384", "sha512")


def local_addresses() -> list[str]:
    """Global-scope addresses on interfaces other than loopback (`lo` holds inner /32s, which
    are traffic addresses, not IKE endpoints)."""
    out = subprocess.run(["ip", "-j", "addr", "show"], capture_output=True, text=True, check=False).stdout
    try:
        links = json.loads(out or "[]")
    except ValueError:
        return []
    found: list[str] = []
    for link in links:
        if link.get("ifname") == "lo" or "LOOPBACK" in link.get("flags", []):
            continue
        for info in link.get("addr_info", []):
            if info.get("scope") != "global":
                continue
            addr = ipaddress.ip_address(info["local"])
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
        c.encryption_algorithms.extend(USERSPACE_ENCRYPTION)
        c.integrity_algorithms.extend(USERSPACE_INTEGRITY)
        c.udp_encapsulation = caps.udp_encapsulation
    return facts
