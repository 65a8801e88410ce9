"""Resuming IKE SAs after an agent restart, without sockets and on a fake clock: the journal
(agent/adapters/resume.py) writes the state file after the exchanges that change an SA and not
because time passes, drops an SA that is mid-exchange, and a new agent restored from the file
goes on with the same IKE SA (the peer's DPD answered, message IDs continuing, the rekey on time,
no loss in the data-plane model); the bindings to the data plane are checked, an upgrade reads
the previous state version through its migration, a fallback initiates without INITIAL_CONTACT,
and no key reaches a reason, a log line or the status document."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from meshsec.agent.adapters.install import plan_child
from meshsec.agent.adapters.records import ChildRecord, SaRecord
from meshsec.agent.adapters.resume import Journal, ResumeRefused, child_event, restore
from meshsec.agent.adapters.status import sa_status
from meshsec.agent.dataplane.api import OwnedState
from meshsec.agent.ike import IkeSa
from meshsec.agent.ike.events import ChildSaEstablished, IkeSaEstablished, IkeSaFailed, IkeSaRekeyed
from meshsec.agent.node.statedir import IKE_STATE, StateDir
from tests.agent.fake_runtime import FakeClock, FakeRuntime
from tests.agent.test_desired import tunnel
from tests.agent.test_reconciler_queue import desire, reconciler
from tests.ike.lifecycle import A, Agent, Net
from tests.ike.test_ike_rekey import connected

DOWN = 3.0  # seconds the agent is away
WALL = 1_700_000_000.0  # the wall clock is another clock than the engine's


def _net() -> Net:
    """A rekeys the IKE SA at +120 s; B probes A after 10 s of silence."""
    return connected({"rekey_time": 120, "rand_time": 0}, {"dpd_delay": 10.0, "rekey_time": 1000})


def _records(agent: Agent) -> dict[IkeSa, SaRecord]:
    """The adapter's records of `agent`'s SAs, every CHILD_SA installed (the data-plane model)."""
    events = {ev.spi_in: ev for _, ev in agent.events if isinstance(ev, ChildSaEstablished)}
    records = {}
    for n, sa in enumerate(agent.sas()):
        record = SaRecord(sa, None, 0.0, handle=n + 1)
        record.children = {spi: ChildRecord(events[spi], sa.local, sa.remote, installed=True,
                                            outbound_live=True) for spi in sa.children}  # fmt: skip
        records[sa] = record
    return records


def _journal(net: Net, state: StateDir) -> Journal:
    return Journal(state.save_ike_state, wall=lambda: WALL + net.now)


def _refresh(journal: Journal, net: Net) -> bool:
    return journal.refresh(net.a.table.take_touched() + net.a.sas(), _records(net.a), None, net.now)


@pytest.fixture
def state(tmp_path: Path) -> StateDir:
    s = StateDir(tmp_path / "state")
    s.prepare()
    return s


def _secrets(entry: dict[str, Any]) -> list[str]:
    doc = entry["sa"]
    found = list(doc["keys"].values())
    for c in doc["children"]:
        found += c["keys_in"] + c["keys_out"]
    return [k for k in found if k]  # (an AEAD has no integrity key)


def test_written_after_exchanges_not_as_time_passes_and_resumed_by_a_new_agent(state: StateDir) -> None:
    net = _net()
    established = net.now
    journal = _journal(net, state)
    assert _refresh(journal, net) and journal.writes == 1
    net.advance(4)  # nothing but time: the deadlines moved, nothing else did
    assert not _refresh(journal, net) and journal.writes == 1
    net.advance(7)  # B's DPD probe, answered by A: A's expected message ID moved on
    assert _refresh(journal, net) and journal.writes == 2
    sa = net.a.sa()
    (spi,) = sa.children
    sa.rekey_child(spi, net.now)  # in flight: this SA cannot be resumed from this moment on
    assert _refresh(journal, net) and state.load_ike_state().sas == ()
    assert "in flight" in journal.uncapturable[sa.local_spi]
    net.settle()
    assert _refresh(journal, net)
    (entry,) = state.load_ike_state().sas
    (new_spi,) = sa.children
    assert new_spi != spi and [c["spi_in"] for c in entry["children"]] == [new_spi]
    assert sa.local_spi not in journal.uncapturable

    # The restart: a new agent with the same data plane reads the file DOWN seconds later.
    before = (sa.spi_i, sa.spi_r, sa.next_request_id, sa.tasks.expected_request_id, sa.lifetime.rekey_at,
              sa.children[new_spi].rekey_at)  # fmt: skip
    peer = net.b.sa()
    fresh = Agent("agent-a", A, net.a.configs)
    fresh.dp = net.a.dp
    net.a = fresh
    net.now += DOWN
    (entry,) = state.load_ike_state().sas
    restored, bindings = restore(entry, fresh.configs[0], net.now, WALL + net.now, None, rnd=fresh.rnd)
    fresh.table.add(restored)
    assert [b.spi_in for b in bindings] == [new_spi]
    after = (restored.spi_i, restored.spi_r, restored.next_request_id, restored.tasks.expected_request_id,
             restored.lifetime.rekey_at, restored.children[new_spi].rekey_at)  # fmt: skip
    assert after[:4] == before[:4]
    assert after[4] == pytest.approx(before[4]) and after[5] == pytest.approx(before[5])  # same deadlines

    probes = peer.stats["dpd_probes"]
    net.advance(30)
    assert peer.stats["dpd_probes"] >= probes + 2 and not net.b.of_type(IkeSaFailed)
    net.advance(established + 125 - net.now)  # the IKE SA rekey, due at +120 s
    assert net.a.of_type(IkeSaRekeyed) and net.b.of_type(IkeSaRekeyed)
    assert len(net.b.of_type(IkeSaEstablished)) == 1  # the peer never saw a new IKE SA
    net.assert_no_loss()
    net.assert_mirrored()


def test_bindings_are_checked_against_what_the_data_plane_kept(state: StateDir) -> None:
    net = _net()
    journal = _journal(net, state)
    _refresh(journal, net)
    (entry,) = state.load_ike_state().sas
    entry["children"][0]["reqid"] = 7
    cfg, now = net.a.configs[0], net.now + DOWN
    sa = net.a.sa()
    (child,) = sa.children.values()
    plan = plan_child(child_event(sa, child), sa.local, sa.remote, 7)
    policies = tuple((p.selector, p.direction) for p in plan.policies)
    kept = OwnedState((plan.inbound.id, plan.outbound.id), policies, max_reqid=7)
    restored, (binding,) = restore(entry, cfg, now, WALL + now, kept)
    assert binding.reqid == 7 and restored.spi_i == sa.spi_i
    with pytest.raises(ResumeRefused, match="no longer in the data plane"):
        restore(entry, cfg, now, WALL + now, OwnedState((plan.inbound.id,), policies))
    with pytest.raises(ResumeRefused, match="policy"):
        restore(entry, cfg, now, WALL + now, OwnedState(kept.sas, policies[1:]))
    with pytest.raises(ResumeRefused, match="expired while the agent was away"):
        restore(entry, cfg, now, WALL + now + 100_000, kept)
    with pytest.raises(ResumeRefused, match="clock moved back"):
        restore(entry, cfg, now, WALL - 100, kept)
    with pytest.raises(ResumeRefused, match="bindings do not match"):
        restore({**entry, "children": []}, cfg, now, WALL + now, kept)


def test_an_upgrade_reads_the_previous_version_through_its_migration(tmp_path: Path) -> None:
    net = _net()
    old = StateDir(tmp_path / "s")
    old.prepare()
    _refresh(_journal(net, old), net)
    (written,) = old.load_ike_state().sas

    def two_to_three(sas: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{**e, "origin_build": "v1"} for e in sas]

    upgraded = StateDir(tmp_path / "s", ike_state_version=3, migrations={2: two_to_three})
    loaded = upgraded.load_ike_state()
    assert loaded.problem is None and loaded.version == 2
    (entry,) = loaded.sas
    assert entry["origin_build"] == "v1" and entry["sa"] == written["sa"]
    now = net.now + DOWN
    restored, _ = restore(entry, net.a.configs[0], now, WALL + now, None)
    assert restored.spi_i == net.a.sa().spi_i
    upgraded.save_ike_state([entry])
    assert json.loads(upgraded.file(IKE_STATE).read_bytes())["version"] == 3
    # A build without a path from version 2 (or an older build reading version 3) falls back.
    for build, reads in ((StateDir(tmp_path / "s", ike_state_version=4, migrations={}), "4"),
                         (StateDir(tmp_path / "s"), "1, 2")):  # fmt: skip
        loaded = build.load_ike_state()
        assert loaded.sas == () and f"version 3; this build reads {reads}" in (loaded.problem or "")


def test_a_version_1_file_of_the_previous_build_migrates_to_tunnel_entries(tmp_path: Path) -> None:
    """The real step (statedir.IKE_STATE_MIGRATIONS[1]): a version-1 file held tunnels only."""
    net = _net()
    state = StateDir(tmp_path / "s")
    state.prepare()
    _refresh(_journal(net, state), net)
    path = state.file(IKE_STATE)
    doc = json.loads(path.read_bytes())
    doc["version"] = 1
    doc["sas"] = [{k: v for k, v in e.items() if k != "kind"} for e in doc["sas"]]
    path.write_text(json.dumps(doc))
    loaded = state.load_ike_state()
    assert loaded.problem is None and loaded.version == 1
    (entry,) = loaded.sas
    assert entry["kind"] == "tunnel"
    now = net.now + DOWN
    restored, _ = restore(entry, net.a.configs[0], now, WALL + now, None)
    assert restored.spi_i == net.a.sa().spi_i


def test_no_key_reaches_a_reason_a_log_line_or_the_status(
    state: StateDir, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    net = _net()
    journal = _journal(net, state)
    _refresh(journal, net)
    (entry,) = state.load_ike_state().sas
    secrets = _secrets(entry)
    assert len(secrets) >= 7 and all(len(s) >= 32 for s in secrets)
    reasons = []
    cfg = net.a.configs[0]
    broken = json.loads(json.dumps(entry))
    broken["sa"]["keys"]["sk_ei"] = "zz" + broken["sa"]["keys"]["sk_ei"]
    for bad in (broken, {**entry, "sa": {**entry["sa"], "version": 9}}, {**entry, "captured_at": "x"}):
        with pytest.raises(ResumeRefused) as caught:
            restore(bad, cfg, net.now, WALL + net.now, OwnedState((), ()))
        reasons.append(str(caught.value))
    with pytest.raises(ResumeRefused) as caught:
        restore(entry, cfg, net.now, WALL + net.now, OwnedState((), ()))
    reasons.append(str(caught.value))
    sa = net.a.sa()
    sa.rekey_child(next(iter(sa.children)), net.now)
    _refresh(journal, net)
    reasons += journal.uncapturable.values()
    record = next(iter(_records(net.a).values()))
    status = json.dumps(sa_status(record, {}, dataplane=False))
    text = "\n".join([*reasons, status, caplog.text, repr(journal.uncapturable)])
    assert reasons and all(s not in text for s in secrets)


async def test_a_fallback_goes_without_initial_contact_where_this_end_is_the_designated_initiator() -> None:
    for designated, initial_contact in ((True, False), (False, True)):
        ike, clock = FakeRuntime(), FakeClock()
        r = reconciler(ike, clock)
        r.restarted = True
        desire(r, tunnel("t1", initiator=designated))
        r.without_initial_contact.add("t1")
        await r.process()
        (sa,) = ike.sas()
        assert sa.config.send_initial_contact is initial_contact


def test_a_hybrid_child_rekey_mid_followup_is_not_resumable_and_its_result_is(state: StateDir) -> None:
    """RFC 9370 2.2.4 CHILD_SA rekeys: while either end's IKE_FOLLOWUP_KE is still due, the SA has
    no entry (a crash then falls back to a new IKE SA: the half-made pair and its link are in
    no snapshot); once the follow-up is done the new pair is written with its additional key
    exchange, and a new agent restored from the file rekeys it again with one."""
    from meshsec.agent.ike.constants import DhId, TransformType
    from meshsec.agent.ike.events import ChildSaRekeyed
    from tests.ike.test_child_followup_ke import _followups, _hybrid

    net = _hybrid()
    journal = _journal(net, state)
    assert _refresh(journal, net) and len(state.load_ike_state().sas) == 1
    sa_a, sa_b = net.a.sa(), net.b.sa()
    # A answers B's rekey and holds its half-done state (sa.followup) until B's IKE_FOLLOWUP_KE.
    sa_b.rekey_child(next(iter(sa_b.children)), net.now)
    net.deliver_one()
    assert sa_a.followup is not None and not sa_a.tasks.busy
    assert _refresh(journal, net) and state.load_ike_state().sas == ()
    assert "IKE_FOLLOWUP_KE" in journal.uncapturable[sa_a.local_spi]
    net.settle()
    assert sa_a.followup is None and len(net.a.of_type(ChildSaRekeyed)) == 1
    assert _refresh(journal, net)
    (entry,) = state.load_ike_state().sas
    (child,) = entry["sa"]["children"]
    assert child["spi_in"] in sa_a.children
    assert child["chosen"]["addke"] == [[TransformType.ADDKE1, DhId.ML_KEM_768]]
    # A's own rekey: its CREATE_CHILD_SA is answered, its IKE_FOLLOWUP_KE not yet sent: no entry.
    sa_a.rekey_child(child["spi_in"], net.now)
    net.deliver_one()
    net.deliver_one()
    assert sa_a.tasks.busy and _refresh(journal, net) and state.load_ike_state().sas == ()
    assert "in flight" in journal.uncapturable[sa_a.local_spi]
    net.settle()
    assert len(net.a.of_type(ChildSaRekeyed)) == 2 and _refresh(journal, net)

    fresh = Agent("agent-a", A, net.a.configs)
    fresh.dp = net.a.dp
    net.a = fresh
    net.now += DOWN
    (entry,) = state.load_ike_state().sas
    restored, _ = restore(entry, fresh.configs[0], net.now, WALL + net.now, None, rnd=fresh.rnd)
    fresh.table.add(restored)
    (spi,) = restored.children
    assert restored.children[spi].chosen.addke == ((TransformType.ADDKE1, DhId.ML_KEM_768),)
    seen = _followups(net)
    restored.rekey_child(spi, net.now)
    net.settle()
    assert seen == [("a->b", False), ("b->a", True)]  # the restored SA ran the follow-up too
    (rekeyed,) = fresh.of_type(ChildSaRekeyed)
    assert rekeyed.old_spi_in == spi and len(net.b.of_type(ChildSaRekeyed)) == 3
    net.assert_no_loss()
    net.assert_mirrored()
