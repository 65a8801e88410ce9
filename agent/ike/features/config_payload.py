"""Configuration Payload in IKE_AUTH (RFC 7296 2.19, 3.15): a road warrior's CFG_REQUEST for a
virtual address, DNS servers and split routes, and the gateway's CFG_REPLY.

Responder: a connection with an `address_pool` (virtual_ip.py) requires a CFG_REQUEST that asks
for an address, asks the pool and records the addresses on the SA, where CHILD_SA negotiation
narrows the client's traffic selectors to them (child_sa.py). A client that asks for none gets
FAILED_CP_REQUIRED, a pool that refuses INTERNAL_ADDRESS_FAILURE: as RFC 7296 2.21.2 says, in
place of the CHILD_SA of an IKE SA that is established (the client learns it authenticated and
why it gets nothing) and that the gateway deletes at once; `VirtualAddressRefused` carries the
pool's reason. Without a pool a CFG_REQUEST is ignored (3.15: a responder may).

Initiator: with `IkeConfig.request_virtual_ip` it sends what strongSwan's `vips = 0.0.0.0`
sends and records the CFG_REPLY's addresses."""

from __future__ import annotations

from typing import TYPE_CHECKING

from meshsec.agent.ike import cp
from meshsec.agent.ike.constants import NotifyType, PayloadType
from meshsec.agent.ike.events import VirtualAddressesAssigned, VirtualAddressRefused
from meshsec.agent.ike.failures import FailureReason
from meshsec.agent.ike.feature import Deferred, Feature, Refusal
from meshsec.agent.ike.payloads import CpPayload, Message, Payload
from meshsec.agent.ike.task import Outcome
from meshsec.agent.ike.virtual_ip import AddressPending, AddressRefused, Client, VirtualAddress

if TYPE_CHECKING:
    from meshsec.agent.ike.sa import IkeSa


def _addresses(reply: cp.Reply) -> tuple[VirtualAddress, ...]:
    return tuple(a for a in (reply.ip4, reply.ip6) if a is not None)


class ConfigPayload(Feature):
    def __init__(self) -> None:
        self._request: cp.Request | None = None
        self._reply: cp.Reply | None = None

    # ------------------------------------------------------------------ initiator (client)

    def build_request(self, sa: IkeSa, out: list[Payload]) -> None:
        wanted = sa.config.request_virtual_ip
        if wanted:
            out.append(cp.build_request(ip4="4" in wanted, ip6="6" in wanted))

    def process_response(self, sa: IkeSa, msg: Message, raw: bytes) -> Outcome | Refusal | None:
        if not sa.config.request_virtual_ip:
            return None
        for refused in (NotifyType.INTERNAL_ADDRESS_FAILURE, NotifyType.FAILED_CP_REQUIRED):
            if msg.notify(refused) is not None:
                return Refusal(
                    f"the gateway assigned no virtual address: {refused.name}",
                    FailureReason.from_notify(refused),
                )
        payload = msg.find(PayloadType.CP)
        if not isinstance(payload, CpPayload):
            return Refusal(
                "the gateway sent no CFG_REPLY for our virtual address request",
                FailureReason.INVALID_RESPONSE,
            )
        try:
            reply = cp.parse_reply(payload)
        except cp.CpError as exc:
            return Refusal(f"CFG_REPLY: {exc}", FailureReason.INVALID_RESPONSE)
        if not _addresses(reply):
            return Refusal("the gateway's CFG_REPLY assigns no address", FailureReason.INVALID_RESPONSE)
        sa.virtual_addresses = _addresses(reply)
        sa.cfg_reply = reply
        return None

    # ------------------------------------------------------------------ responder (gateway)

    def process_request(self, sa: IkeSa, msg: Message) -> Refusal | Deferred | None:
        pool = sa.config.address_pool
        if pool is None:
            return None
        payload = msg.find(PayloadType.CP)
        if not isinstance(payload, CpPayload):
            self._refuse(sa, NotifyType.FAILED_CP_REQUIRED, "asked for no virtual address (no CFG_REQUEST)")
            return None
        try:
            request = cp.parse_request(payload)
        except cp.CpError as exc:
            sa.stats["cp_malformed"] += 1
            return Refusal.answer(NotifyType.INVALID_SYNTAX, f"CFG_REQUEST from {sa.remote_identity}: {exc}")
        if request.ip4 is None and request.ip6 is None:
            self._refuse(sa, NotifyType.FAILED_CP_REQUIRED, "asked for no address in its CFG_REQUEST")
            return None
        # An EAP client is the user it proved to be, whatever its IDi (an address, a device name).
        client = Client(sa.eap_identity or str(sa.remote_identity), sa.peer_common_name or "")
        answer = pool.assign(client, request)
        if isinstance(answer, AddressPending):
            sa.stats["cp_deferred"] += 1
            return Deferred(f"addresses for {client.identity}")
        if isinstance(answer, AddressRefused):
            self._refuse(sa, NotifyType.INTERNAL_ADDRESS_FAILURE, answer.reason)
            return None
        # Only the families asked for are answered (cp.build_reply), so only those are the client's.
        granted = cp.Reply(
            answer.ip4 if request.ip4 is not None else None,
            answer.ip6 if request.ip6 is not None else None,
            answer.dns,
            answer.subnets,
        )
        self._request, self._reply = request, granted
        sa.virtual_addresses = _addresses(granted)
        sa.cfg_reply = granted
        sa.emit(VirtualAddressesAssigned(client.identity, tuple(str(a) for a in sa.virtual_addresses),
                                         client.common_name))  # fmt: skip
        return None

    def _refuse(self, sa: IkeSa, notify: NotifyType, reason: str) -> None:
        client = sa.eap_identity or str(sa.remote_identity)
        sa.refuse_first_child = notify
        sa.emit(VirtualAddressRefused(client, f"{client}: {reason}", notify.name))

    def build_response(self, sa: IkeSa, out: list[Payload]) -> None:
        if self._request is not None and self._reply is not None:
            out.append(cp.build_reply(self._request, self._reply))
