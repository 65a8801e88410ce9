"""JSON form of SAs and policies for the standalone runner (tests, benchmarks, debugging).
Errors name the field that is wrong."""

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
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from exc


def sa_id_from_json(d: dict[str, Any], where: str = "sa") -> SaId:
    try:
        dst = ipaddress.ip_address(_get(d, "dst", where))
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
    )
