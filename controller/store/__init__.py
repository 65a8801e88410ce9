"""Key-value stores for resource documents and controller state.

`Store` is the interface the controller codes against; `EmbeddedStore` (a local append-only log,
the default) and `EtcdStore` (etcd v3) implement it. `LeaderElection` picks one active controller
among replicas on top of any `Store`.
"""

from meshsec.controller.store.api import (
    Compare,
    CompareOp,
    CompareTarget,
    Delete,
    Event,
    EventType,
    KeyValue,
    Lease,
    Put,
    RangeResult,
    Store,
    TxnResult,
    Watch,
)
from meshsec.controller.store.clock import Clock, ManualClock, MonotonicClock
from meshsec.controller.store.election import LeaderElection
from meshsec.controller.store.embedded import EmbeddedStore
from meshsec.controller.store.errors import (
    CompactedError,
    ConflictError,
    LeaseNotFoundError,
    StoreCorruptError,
    StoreError,
    StoreUnavailableError,
)

__all__ = [
    "Clock",
    "CompactedError",
    "Compare",
    "CompareOp",
    "CompareTarget",
    "ConflictError",
    "Delete",
    "EmbeddedStore",
    "Event",
    "EventType",
    "KeyValue",
    "LeaderElection",
    "Lease",
    "LeaseNotFoundError",
    "ManualClock",
    "MonotonicClock",
    "Put",
    "RangeResult",
    "Store",
    "StoreCorruptError",
    "StoreError",
    "StoreUnavailableError",
    "TxnResult",
    "Watch",
]
