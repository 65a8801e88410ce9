"""Which data plane this node gets: the kernel's where ESP and ESP-in-UDP work, userspace elsewhere.

The one place that decides: the standalone and the node agent both come here."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from meshsec.agent.dataplane.api import DataPlane, DataPlaneError, Unsupported

if TYPE_CHECKING:
    from meshsec.agent.dataplane.kernel.backend import KernelDataPlane

log = logging.getLogger(__name__)

PREFERENCES = ("auto", "kernel", "userspace")


def _userspace() -> DataPlane:
    # Imported lazily: the userspace backend pulls in TUN and crypto code a kernel node never needs.
    from meshsec.agent.dataplane.userspace.backend import UserspaceDataPlane

    return UserspaceDataPlane()


async def select_backend(
    preference: str = "auto",
    *,
    kernel: KernelDataPlane | None = None,
    userspace_factory: Callable[[], DataPlane] = _userspace,
) -> DataPlane:
    """An unstarted backend; the choice is in `capabilities.backend`.

    "auto" takes the kernel only with what the agent needs from it: ESP, and ESP-in-UDP because
    the IKE engine floats to port 4500 whenever it detects a NAT; otherwise it falls back to
    userspace and logs why. "kernel" fails with Unsupported without ESP and warns without
    ESP-in-UDP (the operator asked for it; tunnels behind a NAT will fail)."""
    if preference not in PREFERENCES:
        raise DataPlaneError(f"data plane preference {preference!r} is not one of {PREFERENCES}")
    if preference == "userspace":
        log.info("data plane: userspace (configured)")
        return userspace_factory()
    if kernel is None:
        # Imported here: pyroute2 and the netlink codec cost a userspace node ~0.2 s of its start
        # (an agent's restart is counted until its control plane is back: docs/benchmarks.md).
        from meshsec.agent.dataplane.kernel.backend import KernelDataPlane

        kernel = KernelDataPlane()
    backend = kernel
    caps = await backend.detect()
    missing = [what for what, ok in (("ESP", caps.esp), ("ESP-in-UDP", caps.udp_encapsulation)) if not ok]
    if not missing:
        log.info("data plane: kernel (ESP and ESP-in-UDP available; gcm=%s, chacha20poly1305=%s, "
                 "xfrm interfaces=%s)", caps.aead_gcm, caps.aead_chacha20poly1305, caps.xfrm_interfaces)
        return backend
    why = f"no {' and no '.join(missing)}" + "".join(f"; {n}" for n in caps.notes)
    if preference == "kernel":
        if not caps.esp:
            raise Unsupported(f"kernel data plane requested but unusable: {why}")
        log.warning("data plane: kernel (configured), but tunnels behind a NAT will fail: %s", why)
        return backend
    log.warning("data plane: userspace, because the kernel data plane is unusable: %s", why)
    return userspace_factory()
