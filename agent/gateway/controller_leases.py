"""Road warriors' addresses from the controller (AgentService AllocateLease / ReleaseLease), so
that leases are consistent across controller replicas and gateway restarts and show up in
`meshctl get leases` with the controller's connect / disconnect / refusal events.

An `AddressPool` (virtual_ip.py) for the engine, which asks synchronously: the first ask for a
client starts the RPC and answers `AddressPending`; when the RPC is back, `on_ready(client)`
tells the agent to `resume_request` the waiting IKE SA, whose second ask gets the addresses (or
the controller's refusal, e.g. RESOURCE_EXHAUSTED with "pool staff: all 62 addresses ... are
leased"). Each IKE SA that got addresses holds them; the last one to end releases the lease."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Callable
from dataclasses import dataclass

import grpc

from meshsec.agent.ike import cp
from meshsec.agent.ike.virtual_ip import AddressPending, AddressRefused, Client
from meshsec.v1 import agent_pb2, agent_pb2_grpc

log = logging.getLogger(__name__)
RPC_TIMEOUT = 5.0
FULL_TUNNEL = {"0.0.0.0/0", "::/0"}  # the client's own remote_ts covers these; no SUBNET to send


EAP_DEVICE = "eap"


def device_of(client: Client) -> str:
    """A controller-issued device certificate's CN is `<device>.<user>` (controller/ca). A
    password (EAP-MSCHAPv2) client has no certificate: all its sessions are the one device
    "eap", so a reconnect gets the same address (and a user's second password device shares it)."""
    return client.common_name.split(".", 1)[0] if client.common_name else EAP_DEVICE


def reply_from(response: agent_pb2.AllocateLeaseResponse) -> cp.Reply:
    addresses = [ipaddress.ip_address(a) for a in response.addresses]
    ip4 = next((a for a in addresses if isinstance(a, ipaddress.IPv4Address)), None)
    ip6 = next((a for a in addresses if isinstance(a, ipaddress.IPv6Address)), None)
    dns = tuple(ipaddress.ip_address(a) for a in response.dns)
    subnets = tuple(ipaddress.ip_network(r) for r in response.routes if r not in FULL_TUNNEL)
    return cp.Reply(ip4, ip6, dns, subnets)


@dataclass(slots=True)
class _Lease:
    reply: cp.Reply
    user: str  # the controller's RemoteAccessUser behind the client's identity
    holders: int = 0


class ControllerLeases:
    def __init__(
        self,
        service: agent_pb2_grpc.AgentServiceAsyncStub,
        on_ready: Callable[[Client], None],
        *,
        node: str = "",
    ) -> None:
        self._service = service
        self._on_ready = on_ready
        self._node = node  # empty: the controller takes the caller's certificate
        self.leases: dict[str, _Lease] = {}
        self._refused: dict[str, str] = {}  # answered once, to the ask that resumes
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._releases: set[asyncio.Task[None]] = set()

    def assign(self, client: Client, request: cp.Request) -> cp.Reply | AddressRefused | AddressPending:
        key = client.key
        lease = self.leases.get(key)
        if lease is not None:
            lease.holders += 1
            return lease.reply
        if key in self._refused:
            return AddressRefused(self._refused.pop(key))
        if key not in self._tasks:
            self._tasks[key] = asyncio.get_running_loop().create_task(self._allocate(client))
        return AddressPending()

    async def _allocate(self, client: Client) -> None:
        key = client.key
        request = agent_pb2.AllocateLeaseRequest(
            node=self._node, identity=client.identity, device=device_of(client)
        )
        try:
            response = await self._service.AllocateLease(request, timeout=RPC_TIMEOUT)
            self.leases[key] = _Lease(reply_from(response), response.user)
        except grpc.aio.AioRpcError as exc:
            self._refused[key] = f"controller: {exc.details() or exc.code().name}"
        except (OSError, ValueError) as exc:  # no route to the controller, a garbled address
            self._refused[key] = f"controller: {type(exc).__name__}: {exc}"
        finally:
            del self._tasks[key]
        self._on_ready(client)

    def user_of(self, client: Client) -> str | None:
        """The user the controller leased `client`'s addresses to; None while none is held."""
        lease = self.leases.get(client.key)
        return lease.user if lease is not None else None

    def release(self, client: Client) -> bool:
        """One IKE SA of `client` ended; the last one gives the lease back (in the background)."""
        lease = self.leases.get(client.key)
        if lease is None:
            return False
        lease.holders -= 1
        if lease.holders > 0:
            return False
        del self.leases[client.key]
        task = asyncio.get_running_loop().create_task(self._release(client))
        self._releases.add(task)
        task.add_done_callback(self._releases.discard)
        return True

    async def _release(self, client: Client) -> None:
        request = agent_pb2.ReleaseLeaseRequest(
            node=self._node, identity=client.identity, device=device_of(client)
        )
        try:
            await self._service.ReleaseLease(request, timeout=RPC_TIMEOUT)
        except (grpc.aio.AioRpcError, OSError) as exc:
            # The lease stays with this gateway in the store; the client's next connect reuses it.
            log.warning("releasing the lease of %s failed: %s", client.identity, exc)

    async def settle(self) -> None:
        """Waits for the RPCs in flight (tests, shutdown)."""
        await asyncio.gather(*self._tasks.values(), *self._releases, return_exceptions=True)
