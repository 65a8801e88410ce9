"""The IKE SA state file: versioned, atomic, 0600, written only on change, every bad file a
reason to fall back (never an exception), removed on leaving the mesh."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from meshsec.agent.node.statedir import IKE_STATE, IKE_STATE_MAX_AGE, IKE_STATE_VERSION, StateDir

SNAPSHOT = {"spi_i": "0102030405060708", "sk_d": "c0ffee" * 8, "next_id": 7}


@pytest.fixture
def state(tmp_path: Path) -> StateDir:
    s = StateDir(tmp_path / "state")
    s.prepare()
    return s


def test_round_trip_mode_0600_and_no_temporary_left(state: StateDir) -> None:
    assert state.save_ike_state([SNAPSHOT], now=1000.0)
    path = state.file(IKE_STATE)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(os.listdir(state.path)) == [IKE_STATE]
    loaded = state.load_ike_state(now=1010.0)
    assert loaded.problem is None and loaded.sas == (SNAPSHOT,)
    assert loaded.version == IKE_STATE_VERSION and loaded.written_at == 1000.0


def test_written_only_when_the_content_changes(state: StateDir) -> None:
    assert state.save_ike_state([SNAPSHOT], now=1.0)
    mtime = state.file(IKE_STATE).stat().st_mtime_ns
    assert not state.save_ike_state([dict(SNAPSHOT)], now=2.0)
    assert state.file(IKE_STATE).stat().st_mtime_ns == mtime
    assert state.save_ike_state([{**SNAPSHOT, "next_id": 8}], now=3.0)
    assert state.load_ike_state(now=4.0).sas[0]["next_id"] == 8


def test_missing_file_is_a_reason(state: StateDir) -> None:
    loaded = state.load_ike_state()
    assert loaded.sas == () and loaded.problem is not None and "no ike-sas.json" in loaded.problem


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"{not json", "not JSON"),
        (b"\x00\xff\xfe", "not JSON"),
        (b"[]", "not a meshsec-ike-state file"),
        (json.dumps({"format": "meshsec-ike-state", "version": 99, "written_at": 1, "sas": []}).encode(),
         "state version 99; this build reads 1"),
        (json.dumps({"format": "meshsec-ike-state", "version": "1", "written_at": 1, "sas": []}).encode(),
         "state version '1'"),
        (json.dumps({"format": "meshsec-ike-state", "version": 1, "written_at": 1, "sas": [3]}).encode(),
         "malformed"),
    ],
)
def test_corrupt_or_unknown_files_fall_back_with_the_reason(
    state: StateDir, content: bytes, expected: str
) -> None:
    state.write(IKE_STATE, content)
    loaded = state.load_ike_state(now=2.0)
    assert loaded.sas == ()
    assert loaded.problem is not None and expected in loaded.problem


def test_a_stale_file_is_not_resumed(state: StateDir) -> None:
    state.save_ike_state([SNAPSHOT], now=100.0)
    assert state.load_ike_state(now=100.0 + IKE_STATE_MAX_AGE - 1).sas == (SNAPSHOT,)
    loaded = state.load_ike_state(now=100.0 + IKE_STATE_MAX_AGE + 1)
    assert loaded.sas == () and loaded.problem is not None and "stale" in loaded.problem


def test_the_reason_never_quotes_the_keys(state: StateDir) -> None:
    secret = "5ec7e7" * 10
    state.write(IKE_STATE, json.dumps({"format": "meshsec-ike-state", "version": 1,
                                       "written_at": "x", "sas": [{"sk_d": secret}]}).encode())  # fmt: skip
    loaded = state.load_ike_state()
    assert loaded.problem is not None and secret not in loaded.problem and secret not in repr(loaded)


def test_removed_on_leaving_and_written_again_after(state: StateDir) -> None:
    state.save_ike_state([SNAPSHOT], now=1.0)
    assert state.remove_ike_state()
    assert not state.file(IKE_STATE).exists() and not state.remove_ike_state()
    assert state.save_ike_state([SNAPSHOT], now=2.0)  # the same content, but the file was gone
    assert state.file(IKE_STATE).exists()
