"""Wakes the adapter's address watch when the host's addresses change: a netlink route socket
subscribed to RTMGRP_IPV4_IFADDR and RTMGRP_IPV6_IFADDR (rtnetlink(7)), read by the event loop.
The messages themselves are not parsed: any of them means "list the addresses again", which
keeps one source of truth (the lister) and costs nothing while nothing changes."""

from __future__ import annotations

import asyncio
import socket

from meshsec.common.deadline import set_within

RTMGRP_IPV4_IFADDR = 0x10
RTMGRP_IPV6_IFADDR = 0x100


class AddressEvents:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._changed = asyncio.Event()
        self._sock: socket.socket | None = None
        try:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        except OSError:  # no netlink (not Linux, or forbidden): the watch falls back to polling
            return
        try:
            sock.bind((0, RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR))
            sock.setblocking(False)
            loop.add_reader(sock.fileno(), self._readable)
        except OSError:
            sock.close()
            return
        self._sock = sock

    @property
    def subscribed(self) -> bool:
        return self._sock is not None

    def _readable(self) -> None:
        assert self._sock is not None
        while True:
            try:
                if not self._sock.recv(65536):
                    break
            except (BlockingIOError, InterruptedError):
                break
            except OSError:  # ENOBUFS: events were lost; a re-listing covers them all
                break
        self._changed.set()

    async def wait(self, timeout: float) -> None:
        """Returns at the next address change, or after `timeout` seconds."""
        await set_within(self._changed, timeout)
        self._changed.clear()

    def close(self) -> None:
        if self._sock is not None:
            self._loop.remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None
