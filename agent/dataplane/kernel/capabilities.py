"""What the running kernel can do, found by trying it: throwaway SAs and an xfrm interface in a
scratch network namespace (so nothing is ever left in the agent's own tables).

Reading /proc/crypto or modules lists is not reliable (modules load on demand, builds differ);
a NEWSA the kernel accepts is. The errors that mean "missing" are the ones xfrm_user returns:
EPROTONOSUPPORT (no esp4/ah4 type), ENOSYS (algorithm unknown to the crypto API), ENOENT.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import os
import secrets
from dataclasses import dataclass

from pyroute2 import IPRoute, netns
from pyroute2.netlink.exceptions import NetlinkError

from meshsec.agent.dataplane.api import (
    Capabilities,
    Direction,
    Encryption,
    Integrity,
    IpsecProtocol,
    Mode,
    SaId,
    SecurityAssociation,
    UdpEncapsulation,
)
from meshsec.agent.dataplane.kernel import xfrm_messages as xm
from meshsec.agent.dataplane.kernel.translate import OwnerMark, sa_id_message, sa_message
from meshsec.agent.dataplane.kernel.xfrm_socket import KernelError, XfrmSocket
from meshsec.common.secrets import Secret

log = logging.getLogger(__name__)

MISSING = {errno.EPROTONOSUPPORT, errno.ENOSYS, errno.ENOENT, errno.EOPNOTSUPP}
_PROBE_MARK = OwnerMark(0, 0x0000_0F00)
# The first SA of a kind makes the kernel load and self-test modules (esp4, authenc, gcm, ...):
# seconds on a slow machine, so probes wait longer than normal requests.
PROBE_TIMEOUT = 120.0
_SRC, _DST = ipaddress.IPv4Address("127.0.0.1"), ipaddress.IPv4Address("127.0.0.2")


@dataclass(frozen=True, slots=True)
class _Probe:
    name: str
    sa: SecurityAssociation


def _probe_sa(protocol: IpsecProtocol, enc: Encryption | None, integ: Integrity | None,
              encap: UdpEncapsulation | None = None) -> SecurityAssociation:
    spi = 0x100 + secrets.randbelow(0xFFFF_0000)
    return SecurityAssociation(
        id=SaId(dst=_DST, spi=spi, protocol=protocol), src=_SRC, direction=Direction.IN,
        mode=Mode.TUNNEL, reqid=1, encryption=enc, integrity=integ, encap=encap)


def _probes() -> list[_Probe]:
    # Random throwaway keys: they never protect a packet and are deleted at once.
    def key(n: int) -> Secret:
        return Secret(secrets.token_bytes(n))

    cbc = Encryption("aes-cbc", key(16))
    sha = Integrity("hmac-sha256", key(32), 128)
    return [
        _Probe("esp", _probe_sa(IpsecProtocol.ESP, cbc, sha)),
        _Probe("aead_gcm", _probe_sa(IpsecProtocol.ESP, Encryption("aes-gcm-16", key(20), 128), None)),
        _Probe("aead_chacha20poly1305",
               _probe_sa(IpsecProtocol.ESP, Encryption("chacha20-poly1305", key(36), 128), None)),
        _Probe("ah", _probe_sa(IpsecProtocol.AH, None, sha)),
        _Probe("udp_encapsulation", _probe_sa(IpsecProtocol.ESP, cbc, sha, UdpEncapsulation(4500, 4500))),
    ]


async def _try_sa(sock: XfrmSocket, probe: _Probe) -> str | None:
    """None if the kernel accepted the SA, else why not."""
    try:
        await sock.request(f"probe {probe.name}", sa_message(probe.sa, _PROBE_MARK), xm.XFRM_MSG_NEWSA)
    except KernelError as exc:
        if exc.errno in MISSING:
            return f"kernel refused a test {probe.name} SA ({errno.errorcode.get(exc.errno)} {exc.errno})"
        raise
    with contextlib.suppress(KernelError):
        await sock.request("probe cleanup", sa_id_message(probe.sa.id, _PROBE_MARK), xm.XFRM_MSG_DELSA)
    return None


def _try_xfrm_interface(ns: str | None) -> str | None:
    ifname = f"msprobe{os.getpid() % 100000}"
    try:
        with IPRoute(netns=ns) as ipr:
            ipr.link("add", ifname=ifname, kind="xfrm", xfrm_if_id=0xFFFF)
            ipr.link("del", ifname=ifname)
    except NetlinkError as exc:
        return f"kernel refused an xfrm interface ({errno.errorcode.get(exc.code)} {exc.code})"
    return None


async def detect(scratch_netns: str | None) -> Capabilities:
    """Probe the kernel. `scratch_netns` is created for the probes and removed after; with None
    the probes run in the current namespace under a probe-only mark and are deleted at once."""
    notes: list[str] = []
    if not os.path.exists("/proc/net/xfrm_stat"):
        notes.append("kernel has no XFRM (/proc/net/xfrm_stat missing)")
        return Capabilities(backend="kernel", esp=False, ah=False, aead_gcm=False,
                            udp_encapsulation=False, notes=tuple(notes))
    if scratch_netns is not None:
        await asyncio.to_thread(netns.create, scratch_netns)
    try:
        sock = XfrmSocket(scratch_netns, timeout=PROBE_TIMEOUT)
        try:
            found: dict[str, bool] = {}
            for probe in _probes():
                why = await _try_sa(sock, probe)
                found[probe.name] = why is None
                if why:
                    notes.append(f"{probe.name}: {why}")
        finally:
            sock.close()
        why_if = await asyncio.to_thread(_try_xfrm_interface, scratch_netns)
        if why_if:
            notes.append(f"xfrm_interfaces: {why_if}")
    finally:
        if scratch_netns is not None:
            await asyncio.to_thread(netns.remove, scratch_netns)
    if not found["esp"]:
        notes.append("ESP is not usable in this kernel (esp4/esp6 modules missing?)")
    return Capabilities(
        backend="kernel",
        esp=found["esp"],
        ah=found["ah"],
        aead_gcm=found["aead_gcm"],
        aead_chacha20poly1305=found["aead_chacha20poly1305"],
        udp_encapsulation=found["udp_encapsulation"],
        xfrm_interfaces=why_if is None,
        notes=tuple(notes),
        outlives_agent=True,
    )
