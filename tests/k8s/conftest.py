"""A real controller replica in-process: embedded store, admin socket in the test's directory."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from meshsec.controller.operator.sync import ControllerSync
from meshsec.controller.server import Controller, ControllerConfig
from meshsec.controller.service.core import Settings
from meshsec.controller.store import EmbeddedStore


@pytest.fixture
async def controller(tmp_path: Path) -> AsyncIterator[Controller]:
    store = await EmbeddedStore.open(tmp_path / "store.log")
    config = ControllerConfig(
        listen="127.0.0.1:0",
        bootstrap_listen="127.0.0.1:0",
        admin_socket=str(tmp_path / "admin.sock"),
        data_dir=tmp_path,
        settings=Settings(replica="k8s-test"),
        leader_period_s=0.5,
    )
    ctl = Controller(store, config)
    await ctl.start()
    try:
        yield ctl
    finally:
        await ctl.stop()
        await store.close()


@pytest.fixture
async def sync(ctl: Controller) -> AsyncIterator[ControllerSync]:
    """The operator's admin client to `ctl` (a test module's controller fixture)."""
    assert ctl.config.admin_socket is not None
    client = ControllerSync.unix(ctl.config.admin_socket)
    try:
        yield client
    finally:
        await client.close()
