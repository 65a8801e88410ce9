"""Virtual addresses for road warriors (RFC 7296 2.19): where the gateway's Configuration
Payload gets the addresses it hands out, like strongSwan's attribute providers.

The engine only asks; an `AddressPool` on the connection's IkeConfig answers with the addresses,
DNS servers and split routes for one client, with why it cannot (the pool is full, the client is
not allowed), or with `AddressPending` when the answer needs I/O (the controller's AllocateLease):
then the gateway sends nothing yet, keeps the IKE_AUTH request, and processes it again when the
agent calls `IkeSa.resume_request` (or the client retransmits it). Giving addresses back when the
client's IKE SA ends is the pool owner's job: the engine announces each assignment with a
`VirtualAddressesAssigned` event and every IKE SA's end with `IkeSaDeleted` / `IkeSaFailed`."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Protocol

from meshsec.agent.ike import cp
from meshsec.agent.ike.ts import Ts

VirtualAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True, slots=True)
class Client:
    """Who asks: its authenticated IKE identity (as shown to humans) and, for certificate
    clients, its certificate's common name (`<device>.<user>` for controller-issued device
    certificates). Several devices of one user share the identity, never the common name."""

    identity: str
    common_name: str = ""

    @property
    def key(self) -> str:
        return f"{self.identity}/{self.common_name}" if self.common_name else self.identity


@dataclass(frozen=True, slots=True)
class AddressPending:
    """The pool is asking elsewhere; resume the client's request once it has the answer."""


@dataclass(frozen=True, slots=True)
class AddressRefused:
    """Why a client gets no address; it goes to the client as INTERNAL_ADDRESS_FAILURE and into
    the failure event and the log."""

    reason: str


class AddressPool(Protocol):
    def assign(self, client: Client, request: cp.Request) -> cp.Reply | AddressRefused | AddressPending:
        """Addresses for `client`: at least
        one of a family the request asks for. Asking again for the same client while it holds
        addresses gives the same ones back."""
        ...


def selectors_for(addresses: tuple[VirtualAddress, ...]) -> list[Ts]:
    """The traffic selectors a client's CHILD_SAs are narrowed to: exactly its addresses."""
    return [Ts(a, a) for a in addresses]
