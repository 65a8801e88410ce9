"""Target: the IKE decoder (agent/ike/parse.py) on whole datagrams and on bare payload chains.
Bad input: ParseError. A chain that parses must build again, and the built bytes parse back to
the same payloads (the encoder must take whatever the decoder hands out)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from meshsec.agent.ike.build import build_chain
from meshsec.agent.ike.parse import ParseError, parse_chain, parse_message
from tests.fuzz.runner import Finding


def make() -> Callable[[bytes], None]:
    def one_input(data: bytes) -> None:
        with contextlib.suppress(ParseError):
            parse_message(data)
        if not data:
            return
        try:
            payloads = parse_chain(data[0], memoryview(data)[1:])
        except ParseError:
            return
        first = int(payloads[0].payload_type) if payloads else 0
        again = parse_chain(first, memoryview(build_chain(payloads)))
        if again != payloads:
            raise Finding(f"re-encoding changed the payloads: {payloads!r} -> {again!r}")

    return one_input


def seeds() -> Iterator[tuple[str, bytes]]:
    from tests.fuzz import ike_support
    from tests.ike.test_codec import CORPUS

    for name, data, *_ in CORPUS:
        yield f"codec-{name}", data
    for cert in (False, True):
        p = ike_support.new_pair(cert)
        p.initiator.initiate(p.now)
        p.pump()
        for i, (_, d) in enumerate(p.wire):
            yield f"{'cert' if cert else 'psk'}-wire-{i}", d.data
