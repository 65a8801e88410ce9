"""Address.packed_host, which NAT detection, COOKIEs and MOBIKE's NO_NATS_ALLOWED hash: the same
bytes as the address parsed afresh, for both families, and no cached answer for a bad host."""

from __future__ import annotations

import hashlib
import ipaddress
import struct

import pytest

from meshsec.agent.ike.address import Address, packed_host
from meshsec.agent.ike.exchanges.mobike import path_octets
from meshsec.agent.ike.natt import nat_detection_hash


@pytest.mark.parametrize("host", ["198.18.0.7", "2001:db8::1", "::ffff:198.18.0.9"])
def test_packed_host_is_the_parsed_address(host: str) -> None:
    assert Address(host, 500).packed_host == ipaddress.ip_address(host).packed
    assert packed_host(host) is packed_host(host)  # asked twice, parsed once


def test_nat_detection_hash_is_rfc_7296_formula() -> None:
    spi_i, spi_r = bytes(range(8)), bytes(range(8, 16))
    for addr in (Address("198.18.3.4", 4500), Address("2001:db8::5", 500)):
        ip = ipaddress.ip_address(addr.host).packed
        expect = hashlib.sha1(spi_i + spi_r + ip + struct.pack("!H", addr.port)).digest()
        assert nat_detection_hash(spi_i, spi_r, addr) == expect
    # Another address or port, another hash: the cache must not mix hosts up.
    a = nat_detection_hash(spi_i, spi_r, Address("198.18.3.4", 4500))
    assert a != nat_detection_hash(spi_i, spi_r, Address("198.18.3.5", 4500))
    assert a != nat_detection_hash(spi_i, spi_r, Address("198.18.3.4", 500))


def test_path_octets() -> None:
    src, dst = Address("198.18.1.1", 500), Address("198.18.1.2", 4500)
    assert path_octets(src, dst) == bytes([198, 18, 1, 1, 198, 18, 1, 2]) + struct.pack("!HH", 500, 4500)


@pytest.mark.parametrize("host", ["not-an-address", "198.18.0.300", ""])
def test_a_bad_host_raises_every_time(host: str) -> None:
    for _ in range(2):  # lru_cache keeps no exception: the second call raises as well
        with pytest.raises(ValueError):
            packed_host(host)
