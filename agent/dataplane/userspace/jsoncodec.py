"""JSON form of SAs and policies: the standalone runner's (tests, benchmarks, debugging) and the
data-plane daemon's control protocol (control.py). Errors name the field that is wrong and never
carry a key's value."""

from __future__ import annotations

import ipaddress
from typing import Any

from meshsec.agent.dataplane.api import (
    Direction,
    Encryption,
    Integrity,
    IpsecProtocol,
    Lifetime,
    Mode,
    Policy,
    PolicyAction,
    SaId,
    SecurityAssociation,
    Template,
    TrafficSelector,
    UdpEncapsulation,
)
from meshsec.common.secrets import Secret


class ConfigError(ValueError):
    pass


def _get(d: dict[str, Any], key: str, where: str) -> Any:
    if key not in d:
        raise ConfigError(f"{where}: missing field {key!r}")
    return d[key]


def _enum(cls: Any, value: Any, where: str) -> Any:
    try:
        return cls[str(value).upper()]
    except KeyError:
        raise ConfigError(f"{where}: {value!r} is not one of {[m.name.lower() for m in cls]}") from None


def _key(value: Any, where: str) -> Secret:
    try:
        return Secret(bytes.fromhex(value))
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: key must be a hex string") from None


def selector_from_json(d: dict[str, Any], where: str = "selector") -> TrafficSelector:
    try:
        return TrafficSelector(
            src=ipaddress.ip_network(_get(d, "src", where)),
            dst=ipaddress.ip_network(_get(d, "dst", where)),
            protocol=int(d.get("protocol", 0)),
            src_ports=tuple(d.get("src_ports", (0, 65535))),
            dst_ports=tuple(d.get("dst_ports", (0, 65535))),
        )
    except ConfigError:
        raise  # already names the field
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from exc


def sa_id_from_json(d: dict[str, Any], where: str = "sa") -> SaId:
    try:
        dst = ipaddress.ip_address(_get(d, "dst", where))
    except ConfigError:
        raise  # already names the field
    except ValueError as exc:
        raise ConfigError(f"{where}.dst: {exc}") from exc
    protocol = _enum(IpsecProtocol, d.get("protocol", "esp"), f"{where}.protocol")
    return SaId(dst, int(_get(d, "spi", where)), protocol)


def sa_from_json(d: dict[str, Any], where: str = "sa") -> SecurityAssociation:
    enc = d.get("encryption")
    integ = d.get("integrity")
    encap = d.get("encap")
    try:
        src = ipaddress.ip_address(_get(d, "src", where))
    except ConfigError:
        raise  # already names the field
    except ValueError as exc:
        raise ConfigError(f"{where}.src: {exc}") from exc
    return SecurityAssociation(
        id=sa_id_from_json(d, where),
        src=src,
        direction=_enum(Direction, _get(d, "direction", where), f"{where}.direction"),
        mode=_enum(Mode, d.get("mode", "tunnel"), f"{where}.mode"),
        reqid=int(_get(d, "reqid", where)),
        encryption=Encryption(str(_get(enc, "name", f"{where}.encryption")),
                              _key(enc.get("key", ""), f"{where}.encryption.key"),
                              int(enc.get("icv_bits", 0))) if enc else None,
        integrity=Integrity(str(_get(integ, "name", f"{where}.integrity")),
                            _key(integ.get("key", ""), f"{where}.integrity.key"),
                            int(_get(integ, "truncation_bits", f"{where}.integrity"))) if integ else None,
        encap=UdpEncapsulation(int(encap["src_port"]), int(encap["dst_port"])) if encap else None,
        replay_window=int(d.get("replay_window", 1024)),
        esn=bool(d.get("esn", True)),
        lifetime=Lifetime(**d.get("lifetime", {})),
        selector=selector_from_json(d["selector"], f"{where}.selector") if d.get("selector") else None,
        if_id=int(d.get("if_id", 0)),
    )


def policy_from_json(d: dict[str, Any], where: str = "policy") -> Policy:
    t = d.get("template")
    template = None
    if t:
        template = Template(
            protocol=_enum(IpsecProtocol, t.get("protocol", "esp"), f"{where}.template.protocol"),
            mode=_enum(Mode, t.get("mode", "tunnel"), f"{where}.template.mode"),
            src=ipaddress.ip_address(t["src"]) if t.get("src") else None,
            dst=ipaddress.ip_address(t["dst"]) if t.get("dst") else None,
            reqid=int(_get(t, "reqid", f"{where}.template")),
        )
    return Policy(
        selector=selector_from_json(_get(d, "selector", where), f"{where}.selector"),
        direction=_enum(Direction, _get(d, "direction", where), f"{where}.direction"),
        action=_enum(PolicyAction, d.get("action", "protect"), f"{where}.action"),
        template=template,
        priority=int(d.get("priority", 0)),
        if_id=int(d.get("if_id", 0)),
    )


# -- the other way: what the agent sends to the data-plane daemon --


def selector_to_json(sel: TrafficSelector) -> dict[str, Any]:
    return {"src": str(sel.src), "dst": str(sel.dst), "protocol": sel.protocol,
            "src_ports": list(sel.src_ports), "dst_ports": list(sel.dst_ports)}  # fmt: skip


def sa_id_to_json(sa_id: SaId) -> dict[str, Any]:
    return {"dst": str(sa_id.dst), "spi": sa_id.spi, "protocol": sa_id.protocol.name.lower()}


def sa_to_json(sa: SecurityAssociation) -> dict[str, Any]:
    """Keys in hex: this dict is for the daemon's 0600 socket only, never for a log."""
    d: dict[str, Any] = {
        **sa_id_to_json(sa.id), "src": str(sa.src), "direction": sa.direction.value, "mode": sa.mode.value,
        "reqid": sa.reqid, "replay_window": sa.replay_window, "esn": sa.esn,
        "lifetime": {f: getattr(sa.lifetime, f) for f in Lifetime.__dataclass_fields__}, "if_id": sa.if_id,
    }  # fmt: skip
    if sa.encryption is not None:
        d["encryption"] = {"name": sa.encryption.name, "key": sa.encryption.key.reveal().hex(),
                           "icv_bits": sa.encryption.icv_bits}  # fmt: skip
    if sa.integrity is not None:
        d["integrity"] = {"name": sa.integrity.name, "key": sa.integrity.key.reveal().hex(),
                          "truncation_bits": sa.integrity.truncation_bits}  # fmt: skip
    if sa.encap is not None:
        d["encap"] = {"src_port": sa.encap.src_port, "dst_port": sa.encap.dst_port}
    if sa.selector is not None:
        d["selector"] = selector_to_json(sa.selector)
    return d


def policy_to_json(policy: Policy) -> dict[str, Any]:
    d: dict[str, Any] = {"selector": selector_to_json(policy.selector), "direction": policy.direction.value,
                         "action": policy.action.value, "priority": policy.priority, "if_id": policy.if_id}
    t = policy.template
    if t is not None:
        d["template"] = {"protocol": t.protocol.name.lower(), "mode": t.mode.value, "reqid": t.reqid,
                         "src": str(t.src) if t.src is not None else None,
                         "dst": str(t.dst) if t.dst is not None else None}  # fmt: skip
    return d
