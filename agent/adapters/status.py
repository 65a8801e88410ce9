"""The adapter's status document (the status socket's `ike_sas` and `recent`): pure assembly
from SaRecords and the counters the adapter read for them."""

from __future__ import annotations

from collections.abc import Mapping

from meshsec.agent.adapters.names import algorithm_dict, protocol_name
from meshsec.agent.adapters.records import ChildRecord, SaRecord
from meshsec.agent.adapters.traffic import Traffic

Counters = dict[str, int]


def counters_doc(traffic: Traffic | None) -> Counters | None:
    if traffic is None:
        return None
    return {
        "bytes_in": traffic.bytes_in,
        "packets_in": traffic.packets_in,
        "bytes_out": traffic.bytes_out,
        "packets_out": traffic.packets_out,
    }


def child_status(child: ChildRecord, counters: Counters | None, *, dataplane: bool) -> dict[str, object]:
    ev = child.event
    return {
        "name": ev.name,
        "state": "INSTALLED" if child.installed or not dataplane else "INSTALLING",
        "install_error": child.install_error,
        "protocol": protocol_name(ev.protocol),
        "mode": ev.mode.upper(),
        "spi_in": f"{ev.spi_in:08x}",
        "spi_out": f"{ev.spi_out:08x}",
        "udp_encap": ev.udp_encap,
        "local_ts": [str(t) for t in ev.ts_local],
        "remote_ts": [str(t) for t in ev.ts_remote],
        **algorithm_dict(ev.algorithms),
        "counters": counters,
    }


def sa_status(
    record: SaRecord, counters: Mapping[int, Counters | None], *, dataplane: bool
) -> dict[str, object]:
    """`counters`: by inbound SPI, for the CHILD_SAs whose counters were read."""
    sa = record.sa
    est = record.established
    return {
        "name": record.name,
        "state": sa.state.name,
        "initiator": sa.initiator,
        "local": str(sa.local),
        "remote": str(sa.remote),
        "local_id": est.local_id if est else str(sa.config.local_identity),
        "remote_id": est.remote_id if est else None,
        **({"eap_id": sa.eap_identity} if sa.eap_identity is not None else {}),  # what the peer proved
        "initiator_spi": sa.spi_i.hex(),
        "responder_spi": sa.spi_r.hex(),
        "nat_local": sa.nat_local,
        "nat_remote": sa.nat_remote,
        "mobike": sa.mobike,
        "peer_additional_addresses": list(sa.peer_additional),
        **(algorithm_dict(est.algorithms) if est else {}),
        "created": record.created,
        "established": record.established_at,
        "engine_stats": dict(sa.stats),
        "child_sas": [
            child_status(c, counters.get(spi), dataplane=dataplane) for spi, c in record.children.items()
        ],
    }


def closed_status(record: SaRecord) -> dict[str, object]:
    sa = record.sa
    return {
        "name": record.name,
        "initiator": sa.initiator,
        "remote": str(sa.remote),
        "initiator_spi": sa.spi_i.hex(),
        "responder_spi": sa.spi_r.hex(),
        "outcome": record.outcome,
        "created": record.created,
    }
