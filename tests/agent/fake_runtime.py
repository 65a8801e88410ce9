"""A fake IKE runtime (agent/node/ike_port.py's `IkeRuntime`) and a fake clock, for reconciler
tests without sockets, engines or sleeps. The fake holds SAs as plain records the test puts in
and moves along; every command the reconciler issues is recorded in `calls` and applied the
way the real adapter would (a DELETE moves the SA to DELETING, a replacement is on its way
until the test completes it with `finish_replacement`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from meshsec.agent.ike import Address, ChildConfig, IkeConfig
from meshsec.agent.node.ike_port import ChildPhase, ChildTraffic, ChildView, SaHandle, SaPhase, SaView


class FakeClock:
    def __init__(self, start: float = 1000.0) -> None:
        self.t = start

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


@dataclass
class FakeSa:
    handle: SaHandle
    config: IkeConfig
    initiator: bool = True
    phase: SaPhase = SaPhase.ESTABLISHED
    authenticated: bool = True
    spi_i: bytes = b"\x00" * 8
    established_at: float | None = 1.0
    created: float = 0.0
    children: list[ChildView] = field(default_factory=list)
    replacing: set[str] = field(default_factory=set)
    child_exchange_in_flight: bool = False

    def view(self) -> SaView:
        return SaView(
            handle=self.handle,
            tunnel=self.config.name,
            authenticated=self.authenticated,
            initiator=self.initiator,
            spi_i=self.spi_i,
            spi_r=b"\x01" * 8,
            local=Address("198.18.0.1", 500),
            remote=Address("198.18.0.2", 500),
            phase=self.phase,
            config=self.config,
            created=self.created,
            established_at=self.established_at if self.phase is SaPhase.ESTABLISHED else None,
            child_exchange_in_flight=self.child_exchange_in_flight,
            replacing=frozenset(self.replacing),
            children=tuple(self.children),
        )


class FakeRuntime:
    ike_port = 500

    def __init__(self) -> None:
        self.live: dict[SaHandle, FakeSa] = {}
        self.calls: list[tuple[object, ...]] = []
        self.fail_initiate: dict[str, BaseException] = {}  # tunnel name -> raised by `initiate`
        self._next = 0
        self._next_spi = 0x1000

    def add(self, config: IkeConfig, **kw: object) -> FakeSa:
        self._next += 1
        sa = FakeSa(SaHandle(self._next), config, **kw)  # type: ignore[arg-type]
        if not sa.children and "children" not in kw:
            sa.children = [self.child(c) for c in config.children]
        self.live[sa.handle] = sa
        return sa

    def child(self, config: ChildConfig, *, ready: bool = True) -> ChildView:
        self._next_spi += 2
        return ChildView(self._next_spi, self._next_spi + 1, config.name, config, ChildPhase.ACTIVE, ready)

    # ------------------------------------------------------------------ IkeRuntime

    def sas(self) -> list[SaView]:
        return [sa.view() for sa in self.live.values()]

    async def initiate(self, config: IkeConfig, remote: Address, local: Address | None) -> None:
        self.calls.append(("initiate", config.name, remote.host))
        failure = self.fail_initiate.get(config.name)
        if failure is not None:
            raise failure
        self.add(config, phase=SaPhase.CONNECTING, established_at=None)

    def delete(self, sa: SaHandle) -> None:
        self.calls.append(("delete", sa))
        self.live[sa].phase = SaPhase.DELETING

    def drop(self, sa: SaHandle) -> None:
        self.calls.append(("drop", sa))
        del self.live[sa]

    def delete_child(self, sa: SaHandle, spi_in: int) -> None:
        self.calls.append(("delete_child", sa, spi_in))
        s = self.live[sa]
        s.children = [dataclasses.replace(c, phase=ChildPhase.RETIRING) if c.spi_in == spi_in else c
                      for c in s.children]  # fmt: skip

    def replace_child(self, sa: SaHandle, spi_in: int, config: ChildConfig) -> None:
        self.calls.append(("replace_child", sa, spi_in, config.name))
        s = self.live[sa]
        s.replacing.add(config.name)
        s.child_exchange_in_flight = True

    def reconfigure(self, sa: SaHandle, config: IkeConfig) -> None:
        self.calls.append(("reconfigure", sa))
        self.live[sa].config = config

    async def child_traffic(self, sa: SaHandle, spi_in: int) -> ChildTraffic | None:
        return None

    # ------------------------------------------------------------------ the test moves SAs along

    def finish_replacement(self, sa: FakeSa, old: ChildView, config: ChildConfig) -> ChildView:
        """The engine's replacement of `old` completed: the new pair is installed and carries
        traffic, the old one is being deleted."""
        new = self.child(config)
        sa.children = [
            dataclasses.replace(c, phase=ChildPhase.RETIRING) if c == old else c for c in sa.children
        ]
        sa.children.append(new)
        sa.replacing.discard(config.name)
        sa.child_exchange_in_flight = False
        return new
