"""Who is connected to the gateway: turns the engine's events of road-warrior IKE SAs into
connect / disconnect / refusal records and gives each client's addresses back to the pool when
its IKE SA ends (an IKE rekey keeps them: the adapter's record follows the successor).

Pure: the runner (standalone) or the node agent feeds it `(sa_key, connection, event)` and
logs, reports or forwards what comes out."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from meshsec.agent.ike.events import (
    Event,
    IkeSaDeleted,
    IkeSaFailed,
    VirtualAddressesAssigned,
    VirtualAddressRefused,
)
from meshsec.agent.ike.virtual_ip import Client


@dataclass(frozen=True, slots=True)
class ClientConnected:
    client: str
    connection: str
    addresses: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ClientDisconnected:
    client: str
    connection: str
    addresses: tuple[str, ...]
    why: str  # "deleted by client", "deleted", "failed: ..."


@dataclass(frozen=True, slots=True)
class ClientRefused:
    connection: str
    peer: str  # the client's identity once it authenticated, else its address
    reason: str
    code: str


ClientEvent = ClientConnected | ClientDisconnected | ClientRefused


@dataclass(slots=True)
class _Held:
    client: Client
    connection: str
    addresses: tuple[str, ...]


class ConnectedClients:
    def __init__(self, release: Callable[[str, Client], object]) -> None:
        """`release(connection, client)` gives one IKE SA's hold on the client's addresses back."""
        self._release = release
        self.held: dict[int, _Held] = {}  # by the adapter's SA record handle

    def hold(self, sa_key: int, connection: str, client: Client,
             addresses: tuple[str, ...]) -> ClientConnected:  # fmt: skip
        """A client whose IKE SA was resumed after a restart: held as if it had just been
        assigned its addresses, so its disconnect releases them."""
        self.held[sa_key] = _Held(client, connection, addresses)
        return ClientConnected(client.identity, connection, addresses)

    def observe(self, sa_key: int, connection: str, peer: str, ev: Event) -> ClientEvent | None:
        if isinstance(ev, VirtualAddressRefused):
            return ClientRefused(connection, ev.remote_id, ev.reason, ev.notify)
        if isinstance(ev, VirtualAddressesAssigned):
            self.held[sa_key] = _Held(Client(ev.remote_id, ev.common_name), connection, ev.addresses)
            return ClientConnected(ev.remote_id, connection, ev.addresses)
        if not isinstance(ev, IkeSaDeleted | IkeSaFailed):
            return None
        held = self.held.pop(sa_key, None)
        if held is None:
            if isinstance(ev, IkeSaFailed):
                return ClientRefused(connection, peer, ev.reason, ev.code.value)
            return None
        self._release(held.connection, held.client)
        if isinstance(ev, IkeSaFailed):
            why = f"failed: {ev.reason}"
        else:
            why = "deleted by client" if ev.by_peer else "deleted by the gateway"
        return ClientDisconnected(held.client.identity, held.connection, held.addresses, why)
