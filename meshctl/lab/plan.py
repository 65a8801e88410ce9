"""The lab's world as data: namespaces, links, addresses and routes, nothing executed here.

    host (root ns) --veth-- inet (underlay router) --+-- dc1-gw1 --lan-- dc1-host
     controller                                      +-- dc2-gw1 --lan-- dc2-host
     198.18.0.1                                      +-- (dc3-gw1 --lan-- dc3-host, with datacenters=3)
                                                     +-- vpc-nat (masquerade) -- vpc-gw1 --lan-- vpc-host
                                                     +-- extdc (strongSwan, 198.19.200.1 on lo)
                                                     +-- rw-laptop (strongSwan road warrior of dc1-gw1)

The resource model gives a data-centre node a private address it binds to and a public one peers
reach it at (a DC edge doing 1:1 NAT, or a cloud elastic IP), so each DC gateway owns its private
address (on lo) and maps the public one onto it with a static NAT on its uplink. The cloud VPC
gateway has only a private address behind a masquerading NAT box, so it initiates every tunnel.

Site subnets (198.19.x.0/24) are routed only by their gateway: the underlay has no route to any of
them, so a ping between workload hosts can only cross inside an IPsec tunnel. The node names and
addresses match deploy/examples/lab-mesh.yaml, which the lab applies.
"""

from __future__ import annotations

from dataclasses import dataclass, field

PREFIX = "msl-"
HOST_IF = "msl-host"  # the host's end of the veth to the underlay
CONTROLLER_ADDRESS = "198.18.0.1"
UNDERLAY_HOST_SIDE = "198.18.0.254"


@dataclass(frozen=True)
class Link:
    """A veth pair; ``None`` as a namespace means the host (root namespace)."""

    a: str | None
    a_if: str
    a_cidr: str | None
    b: str
    b_if: str
    b_cidr: str | None


@dataclass(frozen=True)
class Route:
    ns: str | None
    dst: str
    via: str
    src: str | None = None  # preferred source for traffic this namespace originates


@dataclass(frozen=True)
class StaticNat:
    """1:1 NAT in ``ns``: ``public`` (on ``ifname``) maps to the local ``private`` address."""

    ns: str
    ifname: str
    public: str
    private: str


@dataclass(frozen=True)
class Site:
    name: str
    kind: str  # "datacenter" or "cloud VPC", for people
    node: str  # the gateway node, as named in the manifest
    gateway_ns: str
    host_ns: str
    node_address: str  # where the agent binds IKE (behind NAT: its private address)
    host_addresses: tuple[str, ...]  # workload addresses, one per site prefix
    behind_nat: bool = False


@dataclass(frozen=True)
class ExternalSite:
    name: str  # the ExternalGateway resource
    ns: str
    address: str
    inner_address: str  # inside the gateway's prefixes; what the mesh pings


@dataclass(frozen=True)
class RoadWarrior:
    """A laptop with strongSwan that connects to a remote-access gateway node with the profile
    `meshctl remote-access profile USER DEVICE` renders (docs/remote-access.md)."""

    ns: str
    address: str
    user: str
    device: str
    gateway_node: str
    target: str  # a workload address behind the gateway it pings through its tunnel


@dataclass(frozen=True)
class World:
    namespaces: tuple[str, ...]  # short names; full name is PREFIX + short
    routers: tuple[str, ...]  # namespaces that forward
    links: tuple[Link, ...]
    loopbacks: tuple[tuple[str, str], ...]  # (ns, cidr) on lo
    routes: tuple[Route, ...]
    masquerade: tuple[tuple[str, str], ...]  # (ns, outside ifname)
    static_nat: tuple[StaticNat, ...]
    sites: tuple[Site, ...]
    external: ExternalSite | None
    host_routes: tuple[str, ...] = field(default=())  # host -> underlay prefixes via the veth
    road_warrior: RoadWarrior | None = None

    @staticmethod
    def ns(short: str) -> str:
        return PREFIX + short

    def site(self, name: str) -> Site:
        return next(s for s in self.sites if s.name == name)

    def site_of_node(self, node: str) -> Site | None:
        return next((s for s in self.sites if s.node == node), None)


MAX_DATACENTERS = 4


def datacenter_underlay(n: int) -> int:
    """The third octet of data centre ``n``'s underlay /24 (198.18.3.0/24 is the VPC's NAT box)."""
    return n if n < 3 else n + 1


def _datacenter(n: int, name: str) -> tuple[Site, list[Link], list[Route], list[tuple[str, str]], StaticNat]:
    gw, host = f"{name}-gw1", f"{name}-host"
    u = datacenter_underlay(n)
    public, private = f"198.18.{u}.1", f"198.18.{100 + n}.1"
    links = [
        Link("inet", name, f"198.18.{u}.254/24", gw, "eth0", f"{public}/24"),
        Link(gw, "lan", f"198.19.{n}.1/24", host, "eth0", f"198.19.{n}.10/24"),
    ]
    # The node's own traffic leaves from its private address and is mapped to the public one like
    # everything else; sending from the public one directly would collide with the mappings of
    # inbound flows in conntrack and get its source port rewritten.
    routes = [Route(gw, "default", f"198.18.{u}.254", src=private), Route(host, "default", f"198.19.{n}.1")]
    site = Site(name, "datacenter", gw, gw, host, private, (f"198.19.{n}.10",))
    return site, links, routes, [(gw, f"{private}/32")], StaticNat(gw, "eth0", public, private)


def lab_world(*, with_external: bool = True, datacenters: int = 2) -> World:
    """``datacenters`` (2 to MAX_DATACENTERS) gateway sites dc1..dcN: dcN routes 198.19.N.0/24 and
    binds 198.18.(100+N).1; its public address is on the underlay /24 ``datacenter_underlay(N)``."""
    if not 2 <= datacenters <= MAX_DATACENTERS:
        raise ValueError(f"datacenters must be 2..{MAX_DATACENTERS}, not {datacenters}")
    dc_names = [f"dc{n}" for n in range(1, datacenters + 1)]
    links: list[Link] = [
        Link(None, HOST_IF, f"{CONTROLLER_ADDRESS}/24", "inet", "host", f"{UNDERLAY_HOST_SIDE}/24")
    ]
    routes: list[Route] = []
    loopbacks: list[tuple[str, str]] = []
    sites: list[Site] = []
    static_nat: list[StaticNat] = []
    for n, name in enumerate(dc_names, start=1):
        site, site_links, site_routes, site_lo, nat = _datacenter(n, name)
        sites.append(site)
        static_nat.append(nat)
        links += site_links
        routes += site_routes
        loopbacks += site_lo
    # The cloud VPC: its gateway has only a private address behind a masquerading NAT box.
    links += [
        Link("inet", "vpc", "198.18.3.254/24", "vpc-nat", "outside", "198.18.3.1/24"),
        Link("vpc-nat", "inside", "198.18.130.1/24", "vpc-gw1", "eth0", "198.18.130.10/24"),
        Link("vpc-gw1", "lan", "198.19.30.1/24", "vpc-host", "eth0", "198.19.30.10/24"),
    ]
    routes += [
        Route("vpc-nat", "default", "198.18.3.254"),
        Route("vpc-gw1", "default", "198.18.130.1"),
        Route("vpc-gw1", "198.19.31.0/24", "198.19.30.10"),
        Route("vpc-host", "default", "198.19.30.1"),
    ]
    loopbacks.append(("vpc-host", "198.19.31.10/32"))
    sites.append(
        Site(
            "vpc",
            "cloud VPC",
            "vpc-gw1",
            "vpc-gw1",
            "vpc-host",
            "198.18.130.10",
            ("198.19.30.10", "198.19.31.10"),
            behind_nat=True,
        )
    )
    namespaces = ["inet", *(f"{dc}-{role}" for dc in dc_names for role in ("gw1", "host"))]
    namespaces += ["vpc-nat", "vpc-gw1", "vpc-host"]
    host_routes = [f"198.18.{datacenter_underlay(n)}.0/24" for n in range(1, datacenters + 1)]
    host_routes.append("198.18.3.0/24")
    external = None
    if with_external:
        namespaces.append("extdc")
        links.append(Link("inet", "extdc", "198.18.200.254/24", "extdc", "eth0", "198.18.200.1/24"))
        routes.append(Route("extdc", "default", "198.18.200.254"))
        loopbacks.append(("extdc", "198.19.200.1/32"))
        host_routes.append("198.18.200.0/24")
        external = ExternalSite("partner-aws", "extdc", "198.18.200.1", "198.19.200.1")
    road_warrior = None
    if with_external:  # strongSwan is there: a road warrior too (198.18.6.0/24: no DC uses it)
        namespaces.append("rw-laptop")
        links.append(Link("inet", "rw", "198.18.6.254/24", "rw-laptop", "eth0", "198.18.6.10/24"))
        routes.append(Route("rw-laptop", "default", "198.18.6.254"))
        road_warrior = RoadWarrior("rw-laptop", "198.18.6.10", "bob", "laptop", "dc1-gw1", "198.19.1.10")
    return World(
        namespaces=tuple(namespaces),
        routers=("inet", *(f"{dc}-gw1" for dc in dc_names), "vpc-nat", "vpc-gw1"),
        links=tuple(links),
        loopbacks=tuple(loopbacks),
        routes=tuple(routes),
        masquerade=(("vpc-nat", "outside"),),
        static_nat=tuple(static_nat),
        sites=tuple(sites),
        external=external,
        host_routes=tuple(host_routes),
        road_warrior=road_warrior,
    )
