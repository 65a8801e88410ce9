"""IKE SAs across an agent restart: what the adapter writes to the state dir's IKE state file and
how a new process takes those SAs up again, bound to the CHILD_SAs the data plane kept.

An entry per established, quiescent IKE SA: its engine snapshot (agent/ike/snapshot.py), the
tunnel it belongs to, the wall-clock time it was captured (deadlines in the snapshot are relative
to that moment) and, per CHILD_SA, what binds it to the data plane (reqid and the addresses it
was installed with). `Journal` keeps the entries current: after an input, a timer or a
data-plane job it recaptures only the SAs that were touched, and saves the file only when an
entry changed in substance (keys, SPIs, message IDs, cached response, CHILD_SAs, bindings), not
because its relative deadlines moved on. An SA that is mid-exchange cannot be captured: its
entry goes (an older one would carry the wrong message IDs or keys), so a crash right then
makes that SA fall back to a new one.

`restore` is the other way: each entry is rebuilt with the tunnel's current configuration and
accepted only when every one of its CHILD_SAs is still in the data plane (the adopted SAs and
policies); anything else is a `ResumeRefused` with the reason, and the reconciler replaces that
tunnel's SA make-before-break. Entries hold keys: they go to the 0600 file only, and no reason
or log line quotes them."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from meshsec.agent.adapters.install import ChildInstaller, plan_child
from meshsec.agent.adapters.records import ChildRecord, SaRecord
from meshsec.agent.dataplane.api import OwnedState
from meshsec.agent.ike import Address, ChildSaEstablished, IkeConfig, IkeSa, IkeSaEstablished
from meshsec.agent.ike.child import ChildSa
from meshsec.agent.ike.events import Algorithms
from meshsec.agent.ike.snapshot import SnapshotError, from_dict, to_dict

# Snapshot fields relative to the capture time: they change at every capture without the SA
# changing, so they are left out when deciding whether the file must be rewritten.
_RELATIVE = ("ike_rekey_in", "ike_expire_in", "reauth_in", "created_ago", "inbound_ago", "sent_ago")
_CHILD_RELATIVE = ("rekey_in", "expire_in")
TUNNEL, ROAD_WARRIOR = "tunnel", "road-warrior"  # an entry's "kind" (state file version 2)


class ResumeRefused(ValueError):
    """This entry cannot be resumed; the text says why (never a key)."""


@dataclass(frozen=True, slots=True)
class ChildBinding:
    spi_in: int
    protocol: int
    reqid: int
    local: Address
    remote: Address


def capture(record: SaRecord, installer: ChildInstaller | None, now: float, wall: float) -> dict[str, Any]:
    """The entry of one IKE SA; `SnapshotError` when it cannot be resumed from this moment."""
    sa = record.sa
    doc = to_dict(sa, now)
    bindings = []
    for child in sa.children.values():
        known = record.children.get(child.spi_in)
        if known is None or (installer is not None and not (known.installed and known.outbound_live)):
            raise SnapshotError(f"IKE SA {sa.local_spi.hex()} cannot be captured: CHILD_SA {child.name} "
                                f"{child.spi_in:08x} is not in the data plane yet")  # fmt: skip
        reqid = installer.reqid_of(known.key) if installer is not None else 0
        bindings.append({"spi_in": child.spi_in, "protocol": child.protocol, "reqid": reqid or 0,
                         "local": [known.local.host, known.local.port],
                         "remote": [known.remote.host, known.remote.port]})  # fmt: skip
    kind = ROAD_WARRIOR if sa.config.address_pool is not None else TUNNEL
    return {"tunnel": record.name, "kind": kind, "captured_at": wall, "sa": doc, "children": bindings}


def local_spi_of(entry: dict[str, Any]) -> bytes:
    """The local IKE SPI an entry was captured for (the key the journal holds it by)."""
    try:
        doc = entry["sa"]
        return bytes.fromhex(str(doc["spi_i"] if doc["initiator"] else doc["spi_r"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise ResumeRefused(f"entry is malformed ({type(exc).__name__})") from None


def substance(entry: dict[str, Any]) -> str:
    """The entry without its capture time and relative deadlines: equal when nothing changed."""
    doc = {k: v for k, v in entry["sa"].items() if k not in _RELATIVE}
    doc["children"] = [{k: v for k, v in c.items() if k not in _CHILD_RELATIVE} for c in doc["children"]]
    return json.dumps([entry["tunnel"], doc, entry["children"]], sort_keys=True)


class Journal:
    """The entries the state file holds, kept current from the SAs the engine touched; `save`
    writes the whole list (the state dir skips a write when nothing changed)."""

    def __init__(self, save: Callable[[list[dict[str, Any]]], object], wall: Callable[[], float] = time.time,
                 include: Callable[[SaRecord], bool] = lambda record: True) -> None:  # fmt: skip
        """`include`: which SAs are worth resuming."""
        self.save = save
        self.wall = wall
        self.include = include
        self.enabled = True
        self.writes = 0
        self.uncapturable: dict[bytes, str] = {}  # local SPI -> why its SA has no entry now
        self._entries: dict[bytes, tuple[str, dict[str, Any]]] = {}  # local SPI -> (substance, entry)

    def refresh(self, touched: Iterable[IkeSa], records: dict[IkeSa, SaRecord],
                installer: ChildInstaller | None, now: float, *, force: bool = False) -> bool:  # fmt: skip
        """Recaptures `touched`; saves when an entry changed (or `force`: a final save at stop,
        so every deadline is relative to a fresh capture). Returns whether it saved."""
        if not self.enabled:
            return False
        changed = force
        wall = self.wall()
        for sa in touched:
            spi = sa.local_spi
            record = records.get(sa)
            entry = None
            if record is not None and record.sa is sa and not sa.closed and sa.established \
                    and self.include(record):  # fmt: skip
                try:
                    entry = capture(record, installer, now, wall)
                    self.uncapturable.pop(spi, None)
                except SnapshotError as exc:
                    self.uncapturable[spi] = str(exc)
            else:
                self.uncapturable.pop(spi, None)
            old = self._entries.get(spi)
            if entry is None:
                if old is not None:
                    del self._entries[spi]
                    changed = True
                continue
            key = substance(entry)
            if old is None or old[0] != key or force:
                self._entries[spi] = (key, entry)
                changed = changed or old is None or old[0] != key
        if changed:
            self.save([e for _, e in self._entries.values()])
            self.writes += 1
        return changed

    def keep(self, entry: dict[str, Any]) -> None:
        """An entry read from the file whose SA is not taken up yet (a road warrior waiting for
        its pool's config): saved on as it is, so a restart meanwhile does not lose it."""
        self._entries[local_spi_of(entry)] = (substance(entry), entry)

    def drop(self, entry: dict[str, Any]) -> None:
        """A kept entry that will not be resumed after all."""
        with_key = self._entries.pop(local_spi_of(entry), None)
        if with_key is not None and self.enabled:
            self.save([e for _, e in self._entries.values()])
            self.writes += 1

    def holds(self, sa: IkeSa) -> bool:
        return sa.local_spi in self._entries

    def seed(self, sa: IkeSa, entry: dict[str, Any]) -> None:
        """A resumed SA's entry, as read from the file (so an unchanged SA is not rewritten)."""
        self._entries[sa.local_spi] = (substance(entry), entry)


def restore(entry: dict[str, Any], config: IkeConfig, now: float, wall: float, owned: OwnedState | None,
            **engine: Any) -> tuple[IkeSa, list[ChildBinding]]:  # fmt: skip
    """The IKE SA of `entry` with `config` (the tunnel's current one), and its CHILD_SAs'
    bindings, checked against `owned` (None: no data plane to check, the `none` backend).
    `engine`: rnd, allocate_spi for the engine SA."""
    try:
        captured = float(entry["captured_at"])
        doc = entry["sa"]
        bindings = [ChildBinding(int(c["spi_in"]), int(c["protocol"]), int(c["reqid"]),
                                 Address(str(c["local"][0]), int(c["local"][1])),
                                 Address(str(c["remote"][0]), int(c["remote"][1])))
                    for c in entry["children"]]  # fmt: skip
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise ResumeRefused(f"entry is malformed ({type(exc).__name__})") from None
    elapsed = wall - captured
    if elapsed < 0:
        raise ResumeRefused(f"captured {-elapsed:.0f} s in the future (clock moved back)")
    try:
        sa = from_dict(doc, config, now, elapsed, **engine)
    except SnapshotError as exc:
        raise ResumeRefused(str(exc)) from None
    if sa.lifetime.expire_at is not None and sa.lifetime.expire_at <= now:
        raise ResumeRefused(f"IKE SA expired while the agent was away ({elapsed:.0f} s)")
    by_spi = {b.spi_in: b for b in bindings}
    if set(by_spi) != set(sa.children):
        raise ResumeRefused("its CHILD_SA bindings do not match its CHILD_SAs")
    for child in sa.children.values():
        if child.expire_at is not None and child.expire_at <= now:
            raise ResumeRefused(f"CHILD_SA {child.name} {child.spi_in:08x} expired while the agent was away")
    if owned is not None:
        sas, policies = set(owned.sas), set(owned.policies)
        for child in sa.children.values():
            b = by_spi[child.spi_in]
            plan = plan_child(child_event(sa, child), b.local, b.remote, b.reqid)
            if plan.inbound.id not in sas or plan.outbound.id not in sas:
                raise ResumeRefused(f"CHILD_SA {child.name} {child.spi_in:08x} is no longer in the "
                                    "data plane")  # fmt: skip
            if any((p.selector, p.direction) not in policies for p in plan.policies):
                raise ResumeRefused(f"a policy of CHILD_SA {child.name} {child.spi_in:08x} is no longer "
                                    "in the data plane")  # fmt: skip
    return sa, bindings


def child_event(sa: IkeSa, child: ChildSa) -> ChildSaEstablished:
    """The ChildSaEstablished a restored CHILD_SA would have been announced with (the adapter's
    record of it and the installer's plan are made from it)."""
    chosen = child.chosen
    cfg = child.config
    encr = chosen.encr
    algorithms = Algorithms(encr.id if encr else None, encr.key_length if encr else None, chosen.integ,
                            None, chosen.dh, chosen.esn)  # fmt: skip
    return ChildSaEstablished(
        child.name, child.spi_in, child.spi_out, child.protocol, child.mode, child.keys_in, child.keys_out,
        child.ts_local, child.ts_remote, algorithms, sa.udp_encap,
        math.ceil(cfg.rekey_time) if cfg is not None else 0, cfg.life_time if cfg is not None else 0,
        None, True,
        cfg.rekey_bytes if cfg is not None else 0, cfg.life_bytes if cfg is not None else 0,
        cfg.rekey_packets if cfg is not None else 0, cfg.life_packets if cfg is not None else 0,
    )  # fmt: skip


def ike_event(sa: IkeSa) -> IkeSaEstablished:
    c = sa.chosen
    assert c is not None
    return IkeSaEstablished(
        sa.spi_i, sa.spi_r, sa.initiator, str(sa.config.local_identity), str(sa.remote_identity),
        Algorithms(c.encr.id if c.encr else None, c.encr.key_length if c.encr else None, c.integ, c.prf,
                   c.dh),
        sa.udp_encap, sa.config.name,
    )  # fmt: skip


def child_record(sa: IkeSa, child: ChildSa, binding: ChildBinding) -> ChildRecord:
    return ChildRecord(child_event(sa, child), binding.local, binding.remote, installed=True,
                       outbound_live=True)
