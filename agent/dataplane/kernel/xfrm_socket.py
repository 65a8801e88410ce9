"""NETLINK_XFRM request/response and multicast sockets on pyroute2's asyncio netlink socket."""

from __future__ import annotations

import asyncio
import errno
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import pyroute2.config
from pyroute2.netlink import NETLINK_XFRM, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.nlsocket import AsyncNetlinkSocket, NetlinkRequest

from meshsec.agent.dataplane.api import DataPlaneError
from meshsec.agent.dataplane.kernel import xfrm_messages as xm

log = logging.getLogger(__name__)

# pyroute2 reaches other namespaces through forked helper processes and stops them with SIGTERM.
# A forked child inherits asyncio's signal wakeup fd, so its SIGTERM would reach the agent's event
# loop as if the agent itself had been told to stop. Children with default signal handling die
# quietly instead.
pyroute2.config.disable_mp_signal = True
# At DEBUG, pyroute2 logs every netlink message it handles, and XFRM_MSG_NEWSA carries SA keys.
# Keys never reach a log, whatever level the operator picks.
logging.getLogger("pyroute2").setLevel(logging.INFO)

# What a request does, for error messages; a callable is only formatted if the request fails.
Label = str | Callable[[], str]

REQUEST_TIMEOUT = 10.0
BATCH_SIZE = 256  # requests per sendmsg: well inside the 1 MiB socket buffers, acks included


class KernelError(DataPlaneError):
    """The kernel refused an XFRM request; `errno` is its error number."""

    def __init__(self, what: str, code: int) -> None:
        self.errno = code
        super().__init__(f"{what}: {errno.errorcode.get(code, str(code))} ({code})")


def _text(what: Label) -> str:
    return what if isinstance(what, str) else what()


def _new_socket(netns: str | None, groups: int = 0) -> Any:
    sock = AsyncNetlinkSocket(family=NETLINK_XFRM, netns=netns, groups=groups)
    sock.marshal.msg_map.update(xm.RESPONSE_CLASSES)
    return sock


class XfrmSocket:
    """One request socket; pyroute2 matches answers to requests by sequence number, so concurrent
    requests from several tasks are fine."""

    def __init__(self, netns: str | None = None, timeout: float = REQUEST_TIMEOUT) -> None:
        self._netns = netns
        self._sock: Any = None
        self.timeout = timeout

    async def open(self) -> None:
        if self._sock is None:
            self._sock = _new_socket(self._netns)
            await self._sock.bind()

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    async def request(self, what: Label, msg: Any, msg_type: int, *, ack: bool = True) -> list[Any]:
        """Send one request; returns the answers (none for a plain ack); raises KernelError."""
        flags = NLM_F_REQUEST | (NLM_F_ACK if ack else 0)
        return await self._exchange(what, msg, msg_type, flags)

    async def dump(self, what: Label, msg: Any, msg_type: int) -> list[Any]:
        return await self._exchange(what, msg, msg_type, NLM_F_REQUEST | NLM_F_DUMP)

    async def batch(self, requests: Sequence[tuple[Any, int]]) -> list[int]:
        """Acked (message, type) requests sent many to one sendmsg (like `ip -batch`); one errno per
        request, in order, 0 for success. Callers name failures themselves, so nothing is formatted
        for the requests that succeed."""
        await self.open()
        codes: list[int] = []
        for start in range(0, len(requests), BATCH_SIZE):
            pending = []
            data = bytearray()
            for msg, msg_type in requests[start:start + BATCH_SIZE]:
                req = NetlinkRequest(self._sock, msg, msg_type=msg_type, msg_flags=NLM_F_REQUEST | NLM_F_ACK)
                await req.prepare()
                data += req.msg.data
                pending.append(req)
            self._sock.send(bytes(data))
            async with asyncio.timeout(self.timeout):
                for req in pending:
                    try:
                        async for _ in req.response():
                            pass
                        codes.append(0)
                    except NetlinkError as exc:
                        codes.append(exc.code)
        return codes

    async def _exchange(self, what: Label, msg: Any, msg_type: int, flags: int) -> list[Any]:
        await self.open()
        try:
            async with asyncio.timeout(self.timeout):
                answers = await self._sock.nlm_request(msg, msg_type, flags)
                return [m async for m in answers if m.get("event") != "NLMSG_ERROR"]
        except NetlinkError as exc:
            raise KernelError(_text(what), exc.code) from None
        except TimeoutError:
            raise DataPlaneError(f"{_text(what)}: no answer from the kernel within {self.timeout}s") from None


class XfrmMulticast:
    """Messages from the XFRM multicast groups (ACQUIRE, EXPIRE)."""

    def __init__(self, groups: tuple[int, ...], netns: str | None = None) -> None:
        self._bits = 0
        for group in groups:
            self._bits |= 1 << (group - 1)
        self._netns = netns
        self._sock: Any = None

    async def open(self) -> None:
        if self._sock is None:
            self._sock = _new_socket(self._netns, groups=self._bits)
            await self._sock.bind(groups=self._bits)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    async def messages(self) -> AsyncIterator[Any]:
        await self.open()
        while self._sock is not None:
            async for msg in self._sock.get():
                yield msg
