"""Standalone runner: one userspace data plane in the current network namespace, driven by JSON
lines on stdin, one JSON reply per line on stdout. Used by tests and benchmarks, started as
`ip netns exec NS python -m meshsec.agent.dataplane.userspace.run`. Keys travel on stdin, never
on the command line (which `ps` would show).

Requests: {"op": "start", "config": {...}}, {"op": "add_sa", "sa": {...}}, {"op": "update_sa", ...},
{"op": "delete_sa", "sa": {...}}, {"op": "policy", "policy": {...}}, {"op": "delete_policy",
"policy": {...}}, {"op": "counters", "sa": {...}}, {"op": "drops"}, {"op": "events"},
{"op": "owned"}, {"op": "flush"}, {"op": "lag"}, {"op": "stop"}.

"lag" reports how late a 10 ms asyncio timer fired since the last "lag" request (p50/p99/max in
ms): the delay an IKE engine sharing this event loop would see while packets flow, which is what
the choice between the threaded and the asyncio packet loop trades against throughput.
"""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import time
from dataclasses import asdict
from typing import Any

from meshsec.agent.dataplane.api import DataPlaneError, DataPlaneEvent, SaExpired
from meshsec.agent.dataplane.userspace.backend import UserspaceConfig, UserspaceDataPlane
from meshsec.agent.dataplane.userspace.jsoncodec import (
    ConfigError,
    policy_from_json,
    sa_from_json,
    sa_id_from_json,
)


class Runner:
    def __init__(self) -> None:
        self.dp: UserspaceDataPlane | None = None
        self.udp: socket.socket | None = None
        self.ike_messages = 0
        self.events: list[DataPlaneEvent] = []
        self._pump: asyncio.Task[None] | None = None
        self._lag_task: asyncio.Task[None] | None = None
        self.lags: list[float] = []

    async def handle(self, req: dict[str, Any]) -> dict[str, Any]:
        op = req.get("op")
        if op == "start":
            return await self._start(req.get("config", {}))
        dp = self.dp
        if dp is None:
            raise ConfigError(f"op {op!r} before start")
        if op == "add_sa":
            await dp.add_sa(sa_from_json(req["sa"]))
        elif op == "update_sa":
            await dp.update_sa(sa_from_json(req["sa"]))
        elif op == "delete_sa":
            await dp.delete_sa(sa_id_from_json(req["sa"]))
        elif op == "policy":
            await dp.ensure_policy(policy_from_json(req["policy"]))
        elif op == "delete_policy":
            p = policy_from_json(req["policy"])
            await dp.delete_policy(p.selector, p.direction)
        elif op == "counters":
            return {"counters": asdict(await dp.counters(sa_id_from_json(req["sa"])))}
        elif op == "drops":
            return {"drops": dp.drop_counters(), "ike_messages": self.ike_messages}
        elif op == "events":
            evs = [{"type": "expired", "spi": e.sa.spi, "hard": e.hard} if isinstance(e, SaExpired)
                   else {"type": "acquire", "reqid": e.reqid} for e in self.events]
            self.events.clear()
            return {"events": evs}
        elif op == "owned":
            owned = await dp.list_owned()
            return {"sas": len(owned.sas), "policies": len(owned.policies)}
        elif op == "lag":
            lags = sorted(self.lags) or [0.0]
            self.lags.clear()
            return {"p50_ms": _ms(lags, 0.5), "p99_ms": _ms(lags, 0.99), "max_ms": _ms(lags, 1.0)}
        elif op == "flush":
            await dp.flush_owned()
        elif op == "stop":
            await self.stop()
        else:
            raise ConfigError(f"unknown op {op!r}")
        return {}

    async def _start(self, cfg: dict[str, Any]) -> dict[str, Any]:
        encap_port = cfg.pop("encap_port", None)
        suites = cfg.pop("mtu_suites", None)
        config = UserspaceConfig(**cfg)
        if suites is not None:
            from meshsec.agent.dataplane.userspace.mtu import Suite

            config = UserspaceConfig(**{**cfg, "mtu_suites": tuple(Suite(**s) for s in suites)})
        self.dp = UserspaceDataPlane(config)
        await self.dp.start()
        if encap_port:
            self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.udp.bind(("0.0.0.0", int(encap_port)))
            await self.dp.attach_encap_socket(self.udp, self._on_ike)
        self._pump = asyncio.create_task(self._pump_events())
        self._lag_task = asyncio.create_task(self._measure_lag())
        return {"tun": self.dp.tun_name, "mtu": self.dp.mtu}

    def _on_ike(self, msg: bytes, local: tuple[str, int], remote: tuple[str, int]) -> None:
        self.ike_messages += 1

    async def _pump_events(self) -> None:
        assert self.dp is not None
        async for ev in self.dp.events():
            self.events.append(ev)

    async def _measure_lag(self) -> None:
        while True:
            t0 = time.monotonic()
            await asyncio.sleep(0.01)
            self.lags.append(time.monotonic() - t0 - 0.01)
            if len(self.lags) > 100_000:
                del self.lags[:50_000]

    async def stop(self) -> None:
        for task in (self._pump, self._lag_task):
            if task is not None:
                task.cancel()
        if self.dp is not None:
            await self.dp.close()
        if self.udp is not None:
            self.udp.close()


def _ms(sorted_lags: list[float], quantile: float) -> float:
    return round(sorted_lags[min(len(sorted_lags) - 1, int(quantile * len(sorted_lags)))] * 1000, 2)


async def main() -> None:
    runner = Runner()
    try:
        while True:
            line = await asyncio.to_thread(sys.stdin.readline)
            if not line:
                break
            req: dict[str, Any] = {}
            try:
                req = json.loads(line)
                reply = {"ok": True, **await runner.handle(req)}
            except (ConfigError, DataPlaneError, ValueError, KeyError, TypeError) as exc:
                reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
            print(json.dumps(reply), flush=True)
            if req.get("op") == "stop":
                break
    finally:
        await runner.stop()


if __name__ == "__main__":
    asyncio.run(main())
