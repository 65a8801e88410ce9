"""Which data plane this node gets: the kernel's where ESP works, userspace where it does not."""

from __future__ import annotations

import logging
from collections.abc import Callable

from meshsec.agent.dataplane.api import DataPlane, DataPlaneError, Unsupported
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
    """An unstarted backend. "kernel" fails with Unsupported when the kernel lacks ESP; "auto"
    then falls back to userspace and logs why; the choice is in `capabilities.backend`."""
    if preference not in PREFERENCES:
        raise DataPlaneError(f"data plane preference {preference!r} is not one of {PREFERENCES}")
    if preference == "userspace":
        log.info("data plane: userspace (configured)")
        return userspace_factory()
    backend = kernel or KernelDataPlane()
    caps = await backend.detect()
    if caps.esp:
        log.info("data plane: kernel (ESP available; gcm=%s, xfrm interfaces=%s)",
                 caps.aead_gcm, caps.xfrm_interfaces)
        return backend
    why = "; ".join(caps.notes) or "ESP unavailable"
    if preference == "kernel":
        raise Unsupported(f"kernel data plane requested but unusable: {why}")
    log.warning("data plane: userspace, because the kernel data plane is unusable: %s", why)
    return userspace_factory()
