"""Target: the responder's front door, a fresh Responder and IkeSaTable taking one datagram that
belongs to no SA (IKE_SA_INIT parsing, COOKIE checks, proposal and KE choice). First byte: the
number of half-open SAs the table reports (so the COOKIE path is reached); the rest, the
datagram. Bad input never raises here: the contract is "counted and dropped"."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from tests.fuzz import ike_support
from tests.fuzz.runner import check_counters
from tests.ike.peers import I_ADDR, R_ADDR, Pair, ike_config, responder_config


def make() -> Callable[[bytes], None]:
    def one_input(data: bytes) -> None:
        if not data:
            return
        p = Pair(ike_config(), [responder_config()])
        half_open = data[0] % 16  # the default COOKIE threshold is 10
        sa = p.responder_front.accept(data[1:], R_ADDR, I_ADDR, p.now, half_open)
        check_counters("responder", p.responder_front.stats, *([sa.stats] if sa else []))
        if sa is not None:
            sa.handle_timer(p.now + 60)  # the half-open timeout path
            check_counters("responder SA timer", sa.stats)

    return one_input


def seeds() -> Iterator[tuple[str, bytes]]:
    for cert in (False, True):
        p = ike_support.new_pair(cert)
        p.initiator.initiate(p.now)
        init = p.initiator.datagrams_to_send()[0].data
        yield f"{'cert' if cert else 'psk'}-init", b"\x00" + init
        yield f"{'cert' if cert else 'psk'}-init-cookie", b"\x0c" + init
