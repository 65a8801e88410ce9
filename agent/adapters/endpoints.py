"""The adapter's UDP endpoints: one socket per bound address and port (IKE's and NAT-T's 4500),
which of them the data plane reads (ESP-in-UDP shares 4500 with IKE, RFC 3948), and which one
a datagram from a given local address leaves by (`pick`, pure)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

from meshsec.agent.adapters import udp
from meshsec.agent.dataplane.api import DataPlane, IkeReceiver
from meshsec.agent.ike import Address
from meshsec.agent.ike.constants import NATT_PORT


@dataclass(slots=True)
class Endpoint:
    sock: socket.socket
    bound: Address
    attached: bool = False  # 4500 handed to the data plane, which reads it


def bind_plan(hosts: Iterable[str], ike_port: int) -> list[Address]:
    """Every address to bind, once per spelling of a host: the IKE port and NAT-T's."""
    return [
        Address(h, p) for h in dict.fromkeys(udp.canonical(h) for h in hosts) for p in (ike_port, NATT_PORT)
    ]


def pick(endpoints: Sequence[Endpoint], local: Address) -> Endpoint | None:
    """The socket bound to `local` exactly, else a wildcard one of its family and port."""
    v6 = ":" in local.host
    wildcard = None
    for ep in endpoints:
        if ep.bound.port != local.port or (":" in ep.bound.host) != v6:
            continue
        if ep.bound.host == local.host:
            return ep
        if udp.is_wildcard(ep.bound.host):
            wildcard = ep
    return wildcard


class Endpoints:
    def __init__(self) -> None:
        self.all: list[Endpoint] = []

    def __iter__(self) -> Iterator[Endpoint]:
        return iter(self.all)

    async def open(
        self,
        addresses: Iterable[Address],
        rcvbuf: int,
        loop: asyncio.AbstractEventLoop,
        readable: Callable[[Endpoint], None],
        dataplane: DataPlane | None,
        from_dataplane: IkeReceiver,
    ) -> None:
        """Binds every address and exempts each socket from the data plane's own policies
        (`DataPlane.bypass_socket`); 4500 goes to a data plane that does UDP encapsulation, the
        others are read by `readable` on the loop."""
        share = dataplane is not None and dataplane.capabilities.udp_encapsulation
        for address in addresses:
            held = None
            if share and address.port == NATT_PORT:
                assert dataplane is not None
                held = dataplane.held_encap_socket(address.host, address.port)  # kept across a restart
            sock = held or udp.open_udp_socket(address.host, address.port, rcvbuf)
            self.all.append(Endpoint(sock, address))
            if dataplane is not None:
                # Before any IKE is sent: a tunnel whose selectors hold the peer's own address
                # (node-to-node meshes) must not capture the IKE that keeps it up.
                await dataplane.bypass_socket(sock)
        for ep in self.all:
            if ep.bound.port == NATT_PORT and share:
                assert dataplane is not None
                await dataplane.attach_encap_socket(ep.sock, from_dataplane)
                ep.attached = True
            else:
                loop.add_reader(ep.sock.fileno(), readable, ep)

    def stop_reading(self, loop: asyncio.AbstractEventLoop) -> None:
        for ep in self.all:
            if not ep.attached:
                with contextlib.suppress(Exception):
                    loop.remove_reader(ep.sock.fileno())

    def close_unattached(self) -> None:
        """Closes the sockets the data plane does not hold (it may still read 4500)."""
        for ep in self.all:
            if not ep.attached:
                ep.sock.close()

    def close_all(self) -> None:
        for ep in self.all:
            ep.sock.close()
