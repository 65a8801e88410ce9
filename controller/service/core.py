"""Everything one controller replica's API handlers share."""

from __future__ import annotations

import datetime
from dataclasses import dataclass

from meshsec.controller.ca import AdminCertificates, BootstrapTokens, CertificateAuthority
from meshsec.controller.metrics import ControllerMetrics
from meshsec.controller.remoteaccess.credentials import RemoteAccessCredentials
from meshsec.controller.remoteaccess.leases import LeaseAllocator
from meshsec.controller.service.events import EventLog
from meshsec.controller.service.secrets import TunnelSecrets
from meshsec.controller.service.state import MeshState
from meshsec.controller.service.status import StatusBook


@dataclass(frozen=True, slots=True)
class Settings:
    replica: str = "controller-0"
    node_cert_lifetime: datetime.timedelta = datetime.timedelta(hours=24)
    status_interval_s: int = 30
    history: int = 16  # deltas kept per node for resuming watches
    max_message_bytes: int = 3 * 1024 * 1024  # stay under gRPC's default 4 MiB with headroom
    # A revision with more changes than this, or a policy/gateway edit, on a mesh with more tunnels
    # than rebase_tunnels, resnapshots the slices instead of diffing them (MeshState._too_wide).
    rebase_changes: int = 256
    rebase_tunnels: int = 200_000


@dataclass(frozen=True, slots=True)
class Core:
    settings: Settings
    state: MeshState
    ca: CertificateAuthority
    tokens: BootstrapTokens
    status: StatusBook
    events: EventLog
    secrets: TunnelSecrets
    metrics: ControllerMetrics
    admins: AdminCertificates
    leases: LeaseAllocator
    credentials: RemoteAccessCredentials
