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
RETAKE_RETRY_MAX = 30.0  # seconds between tries to take a resumed client's lease back
# Codes that say the controller is not there (yet): try again; any other answer is final.
_TRANSIENT = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED}
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
        self._retakes: dict[str, asyncio.Task[None]] = {}

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

    def retake(self, client: Client, reply: cp.Reply, lost: Callable[[Client, str], None]) -> None:
        """A resumed IKE SA's hold on the lease an earlier process of this gateway got (and never
        released: it is still this gateway's in the store). Held at once with the persisted
        addresses, so the SA forwards on; AllocateLease for the same identity and device (a
        reconnect, by design the same addresses) confirms it in the background, retried while the
        controller is unreachable. `lost(client, why)`: the controller refused or moved the lease;
        the caller ends the client's SAs (fail closed: the addresses may be another's now)."""
        key = client.key
        lease = self.leases.get(key)
        if lease is not None:
            lease.holders += 1
            return
        self.leases[key] = _Lease(reply, "", holders=1)
        if key not in self._retakes:
            task = asyncio.get_running_loop().create_task(self._retake(client, reply, lost))
            self._retakes[key] = task
            task.add_done_callback(lambda _t: self._retakes.pop(key, None))

    async def _retake(self, client: Client, reply: cp.Reply, lost: Callable[[Client, str], None]) -> None:
        request = agent_pb2.AllocateLeaseRequest(node=self._node, identity=client.identity,
                                                 device=device_of(client))  # fmt: skip
        delay = 1.0
        while True:
            try:
                response = await self._service.AllocateLease(request, timeout=RPC_TIMEOUT)
                break
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in _TRANSIENT:
                    self._forget(client)
                    lost(client, f"controller: {exc.details() or exc.code().name}")
                    return
                why = exc.details() or exc.code().name
            except OSError as exc:
                why = f"{type(exc).__name__}: {exc}"
            log.warning("taking the lease of resumed client %s back failed (%s); it keeps its addresses, "
                        "retrying in %.0f s", client.identity, why, delay)  # fmt: skip
            await asyncio.sleep(delay)
            delay = min(RETAKE_RETRY_MAX, delay * 2)
        try:
            got = reply_from(response)
        except ValueError as exc:
            got, why = None, f"garbled address ({exc})"
        lease = self.leases.get(client.key)
        if lease is None:  # the client left meanwhile; its release went out already
            return
        if got is None or (got.ip4, got.ip6) != (reply.ip4, reply.ip6):
            # The old lease was gone (released, moved): what we just got is a new one nobody
            # holds, so it goes back; the client reconnects and asks for its own.
            self._forget(client)
            task = asyncio.get_running_loop().create_task(self._release(client))
            self._releases.add(task)
            task.add_done_callback(self._releases.discard)
            lost(client, "the controller leased other addresses" if got is not None else why)
            return
        lease.user = response.user
        log.info("lease of resumed client %s taken back (user %s)", client.identity, response.user)

    def _forget(self, client: Client) -> None:
        """Drops the hold without a ReleaseLease (the controller's answer stands)."""
        self.leases.pop(client.key, None)

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
        retake = self._retakes.pop(client.key, None)
        if retake is not None:  # else its AllocateLease could land after our ReleaseLease
            retake.cancel()
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
        for task in self._retakes.values():  # retried forever while the controller is away
            task.cancel()
        await asyncio.gather(*self._tasks.values(), *self._releases, *self._retakes.values(),
                             return_exceptions=True)  # fmt: skip
