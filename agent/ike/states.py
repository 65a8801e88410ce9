"""The states of an IKE SA and of a CHILD_SA and every allowed transition, declared once.

State changes go through `IkeSa.move_to` / `ChildSa.move_to`, which call `check` here: an edge
not listed below is a bug of ours. In strict mode it raises TransitionError; otherwise the
engine fails the IKE SA closed (the error reaches the SA's fail-closed guard the same way)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import TypeVar

from meshsec.agent.ike.constants import ExchangeType

S = TypeVar("S", bound=Enum)


class State(Enum):
    CREATED = "created"
    CONNECTING = "connecting"  # IKE_SA_INIT in progress (initiator)
    AUTHENTICATING = "authenticating"  # keys derived, IKE_AUTH in progress
    ESTABLISHED = "established"
    DELETING = "deleting"  # our DELETE is queued or in flight
    CLOSED = "closed"  # terminal: deleted or failed


class ChildState(Enum):
    INSTALLED = "installed"
    REKEYING = "rekeying"  # our CREATE_CHILD_SA with REKEY_SA is queued or in flight
    REKEYED = "rekeyed"  # a successor exists; this pair only waits for its DELETE
    DELETING = "deleting"  # our DELETE is queued or in flight


_ALIVE = (State.CREATED, State.CONNECTING, State.AUTHENTICATING, State.ESTABLISHED, State.DELETING)

IKE_TRANSITIONS: frozenset[tuple[State, State]] = frozenset(
    {
        (State.CREATED, State.CONNECTING),  # initiate()
        (State.CREATED, State.AUTHENTICATING),  # responder answered IKE_SA_INIT
        (State.CONNECTING, State.AUTHENTICATING),  # initiator processed the IKE_SA_INIT answer
        (State.AUTHENTICATING, State.ESTABLISHED),  # IKE_AUTH done
        (State.CREATED, State.ESTABLISHED),  # the successor made by an IKE rekey
        (State.ESTABLISHED, State.DELETING),  # delete()
        *((s, State.CLOSED) for s in _ALIVE),  # failed or deleted, from anywhere
    }
)

CHILD_TRANSITIONS: frozenset[tuple[ChildState, ChildState]] = frozenset(
    {
        (ChildState.INSTALLED, ChildState.REKEYING),  # our rekey starts
        (ChildState.REKEYING, ChildState.INSTALLED),  # our rekey was refused: retried later
        (ChildState.REKEYING, ChildState.REKEYED),  # our (or, in a collision, the peer's) new pair won
        (ChildState.INSTALLED, ChildState.REKEYED),  # we answered the peer's rekey
        # The peer's rekey we answered never ran its IKE_FOLLOWUP_KE exchanges (RFC 9370 2.2.4).
        (ChildState.REKEYED, ChildState.INSTALLED),
        (ChildState.INSTALLED, ChildState.DELETING),
        (ChildState.REKEYING, ChildState.DELETING),
        (ChildState.REKEYED, ChildState.DELETING),
    }
)


class EapState(Enum):
    """An EAP conversation inside IKE_AUTH (RFC 7296 2.16), gateway side (exchanges/eap_auth.py)."""

    IDENTITY = "identity"  # EAP-Identity request sent
    METHOD = "method"  # the method (MSCHAPv2, TLS) runs; a Nak may switch it once
    SUCCEEDED = "succeeded"  # EAP-Success sent: the next IKE_AUTH must carry AUTH from the MSK
    DONE = "done"  # the peer's MSK AUTH verified
    FAILED = "failed"  # EAP-Failure sent or the conversation broke off


EAP_TRANSITIONS: frozenset[tuple[EapState, EapState]] = frozenset(
    {
        (EapState.IDENTITY, EapState.METHOD),
        (EapState.METHOD, EapState.METHOD),  # the peer's Nak named another method
        (EapState.METHOD, EapState.SUCCEEDED),
        (EapState.SUCCEEDED, EapState.DONE),
        *((s, EapState.FAILED) for s in (EapState.IDENTITY, EapState.METHOD, EapState.SUCCEEDED)),
    }
)


class TransitionError(RuntimeError):
    """A state change no declared edge allows: a bug in the engine."""


def check(edges: frozenset[tuple[S, S]], old: S, new: S, what: str) -> None:
    if (old, new) not in edges:
        raise TransitionError(f"{what}: no transition {old.name} -> {new.name}")


@dataclass(frozen=True, slots=True)
class ExchangeRules:
    """When an exchange may run: `send_in` the states in which a request of ours may start,
    `accept_in` those in which the peer's request is processed (else dropped and counted);
    `from_original_initiator` exchanges are only ever requested by the IKE SA's initiator."""

    send_in: frozenset[State]
    accept_in: frozenset[State]
    from_original_initiator: bool = False
    # Also accepted while the SA's peer is in the middle of EAP (a gateway's `sa.eap` is set).
    accept_during_eap: bool = False


_OPEN = frozenset({State.ESTABLISHED, State.DELETING})

EXCHANGE_RULES: dict[ExchangeType, ExchangeRules] = {
    ExchangeType.IKE_SA_INIT: ExchangeRules(
        frozenset({State.CONNECTING}), frozenset({State.CREATED}), from_original_initiator=True
    ),
    # Nothing but IKE_AUTH may follow IKE_SA_INIT (RFC 7296 1.2); its responder answers a
    # misplaced one itself.
    ExchangeType.IKE_AUTH: ExchangeRules(
        frozenset({State.AUTHENTICATING}), frozenset(_ALIVE), from_original_initiator=True
    ),
    # RFC 9242: between IKE_SA_INIT and IKE_AUTH, requested by the initiator only.
    ExchangeType.IKE_INTERMEDIATE: ExchangeRules(
        frozenset({State.AUTHENTICATING}), frozenset({State.AUTHENTICATING}), from_original_initiator=True
    ),
    ExchangeType.CREATE_CHILD_SA: ExchangeRules(_OPEN, _OPEN),
    # A peer mid-EAP may give up with N(AUTHENTICATION_FAILED) (exchanges/informational.py);
    # any other SA still authenticating drops it, so the sender retries once we are up.
    ExchangeType.INFORMATIONAL: ExchangeRules(_OPEN, _OPEN, accept_during_eap=True),
    ExchangeType.IKE_FOLLOWUP_KE: ExchangeRules(_OPEN, _OPEN),  # RFC 9370 2.2.4
}
