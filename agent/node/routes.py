"""Kernel routes a non-gateway node needs (NodeConfig.routes): remote prefixes via its gateway.

The controller lists, for each node of a site with gateways that is not one of them, what the
gateway's site-scope tunnels reach and the gateway's address (controller/mesh/routes.py): a
Kubernetes worker's pods then send traffic for another cluster to the gateway node, which
encrypts it. The agent keeps exactly those routes, tagged with its own route protocol number so
that it only ever touches routes it installed: at start it removes the ones an earlier run left,
on every desired state it adds, changes and removes what differs, at stop it removes them all.
A route the kernel refuses (the gateway not on a connected network) is logged and retried with
the next desired state. The adapter is `ip` (iproute2), run in a worker thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import subprocess
from collections.abc import Iterable, Sequence

from meshsec.v1 import agent_pb2

log = logging.getLogger(__name__)

# Our routes' `proto` (rtnetlink protocol id; 0-4 are the kernel's, common daemons use up to 200).
ROUTE_PROTO = "241"


class RouteError(Exception):
    pass


class SiteRoutes:
    def __init__(self, netns: str | None = None) -> None:
        self._ip = ["ip", "-n", netns] if netns else ["ip"]
        self.installed: dict[str, str] = {}  # destination -> via
        self.problems: dict[str, str] = {}  # destination -> why the kernel refused it
        self._wanted: dict[str, str] | None = None
        self._changed = asyncio.Event()

    async def _run(self, *args: str) -> None:
        argv = [*self._ip, *args]
        try:
            done = await asyncio.to_thread(
                subprocess.run, argv, capture_output=True, text=True, timeout=10
            )
        except (OSError, subprocess.SubprocessError) as exc:
            raise RouteError(f"{' '.join(argv)}: {exc}") from exc
        if done.returncode != 0:
            raise RouteError(f"{' '.join(argv)}: {done.stderr.strip() or done.returncode}")

    async def flush(self) -> None:
        """Every route of ours, both families (what an earlier run left, or all at stop)."""
        for family in ("-4", "-6"):
            with contextlib.suppress(RouteError):
                await self._run(family, "route", "flush", "proto", ROUTE_PROTO)
        self.installed.clear()

    def want(self, routes: Iterable[agent_pb2.SiteRoute]) -> None:
        """The routes of a new desired state; `run` installs them."""
        wanted: dict[str, str] = {}
        for route in routes:
            try:
                destination = str(ipaddress.ip_network(route.destination, strict=False))
                via = str(ipaddress.ip_address(route.via))
            except ValueError:
                log.warning("route %r via %r from the controller is not valid; skipped",
                            route.destination, route.via)  # fmt: skip
                continue
            wanted[destination] = via
        self._wanted = wanted
        self._changed.set()

    async def apply(self, wanted: dict[str, str]) -> None:
        for destination in sorted(set(self.installed) - set(wanted)):
            with contextlib.suppress(RouteError):  # already gone is fine
                await self._run("route", "del", destination, "proto", ROUTE_PROTO)
            del self.installed[destination]
        self.problems = {d: p for d, p in self.problems.items() if d in wanted}
        for destination, via in sorted(wanted.items()):
            if self.installed.get(destination) == via:
                continue
            try:
                await self._run("route", "replace", destination, "via", via, "proto", ROUTE_PROTO)
            except RouteError as exc:
                self.installed.pop(destination, None)
                if self.problems.get(destination) != str(exc):
                    log.warning("route to %s via the site gateway %s not installed: %s",
                                destination, via, exc)  # fmt: skip
                self.problems[destination] = str(exc)
                continue
            self.problems.pop(destination, None)
            self.installed[destination] = via
            log.info("route to %s via the site gateway %s", destination, via)

    async def run(self) -> None:
        """Applies each wanted set in turn (the latest one when several arrived meanwhile)."""
        while True:
            await self._changed.wait()
            self._changed.clear()
            if self._wanted is not None:
                await self.apply(self._wanted)

    def describe(self) -> list[dict[str, str]]:
        rows = [{"destination": d, "via": v, "state": "installed"} for d, v in sorted(self.installed.items())]
        refused = sorted(self.problems.items())
        return rows + [{"destination": d, "state": "refused", "error": e} for d, e in refused]


def routes_of(node: agent_pb2.NodeConfig | None) -> Sequence[agent_pb2.SiteRoute]:
    return list(node.routes) if node is not None else []
