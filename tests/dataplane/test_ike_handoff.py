"""IKE datagrams the threaded packet loop hands to the event loop: a flood behind the non-ESP
marker is bounded and counted instead of queueing without limit while the loop is busy."""

from __future__ import annotations

import asyncio
import threading

from meshsec.agent.dataplane.userspace.io import MAX_IKE_BACKLOG, IkeHandoff, make_ike_delivery

LOCAL, REMOTE = ("198.18.63.1", 4500), ("198.18.63.2", 4500)


def _flood(deliver: IkeHandoff, count: int) -> None:
    """From another thread, like the data-plane reader."""
    worker = threading.Thread(target=lambda: [deliver(bytes(28), REMOTE) for _ in range(count)])
    worker.start()
    worker.join()


def test_a_flood_from_the_packet_thread_is_bounded_and_counted() -> None:
    loop = asyncio.new_event_loop()
    got: list[tuple[bytes, tuple[str, int], tuple[str, int]]] = []
    try:
        deliver = make_ike_delivery(loop, lambda m, local, remote: got.append((m, local, remote)), LOCAL,
                                    threaded=True)  # fmt: skip
        assert isinstance(deliver, IkeHandoff)
        _flood(deliver, 3 * MAX_IKE_BACKLOG)  # the loop is busy elsewhere: nothing is taken meanwhile
        loop.run_until_complete(asyncio.sleep(0))
        assert len(got) == MAX_IKE_BACKLOG and got[0] == (bytes(28), LOCAL, REMOTE)
        assert deliver.dropped == 2 * MAX_IKE_BACKLOG
        _flood(deliver, 1)  # the loop took the backlog: room again
        loop.run_until_complete(asyncio.sleep(0))
        assert len(got) == MAX_IKE_BACKLOG + 1 and deliver.dropped == 2 * MAX_IKE_BACKLOG
    finally:
        loop.close()


def test_in_loop_delivery_is_direct() -> None:
    loop = asyncio.new_event_loop()
    got: list[bytes] = []
    try:
        deliver = make_ike_delivery(loop, lambda m, local, remote: got.append(m), LOCAL, threaded=False)
        for _ in range(2 * MAX_IKE_BACKLOG):
            deliver(bytes(28), REMOTE)
        assert len(got) == 2 * MAX_IKE_BACKLOG  # the socket buffer bounds this path
    finally:
        loop.close()
