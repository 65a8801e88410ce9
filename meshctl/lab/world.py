"""Building the namespace world from a plan, and tearing down everything a LabState lists."""

from __future__ import annotations

import shutil
from pathlib import Path

from meshsec.meshctl.lab import netns
from meshsec.meshctl.lab.plan import HOST_IF, PREFIX, World
from meshsec.meshctl.lab.state import LabState


def build(world: World, state: LabState) -> None:
    for short in world.namespaces:
        full = world.ns(short)
        state.namespaces.append(full)  # recorded first: a failure below still gets it removed
        state.save()
        netns.add_namespace(full)
    for short in world.routers:
        netns.sysctl(world.ns(short), "net.ipv4.ip_forward", "1")
    for link in world.links:
        a_ns = world.ns(link.a) if link.a is not None else None
        if a_ns is None:
            state.host_links.append(link.a_if)
            state.save()
        netns.veth(a_ns, link.a_if, world.ns(link.b), link.b_if)
        if link.a_cidr:
            netns.ip(a_ns, "addr", "add", link.a_cidr, "dev", link.a_if)
        if link.b_cidr:
            netns.ip(world.ns(link.b), "addr", "add", link.b_cidr, "dev", link.b_if)
    for short, cidr in world.loopbacks:
        netns.ip(world.ns(short), "addr", "add", cidr, "dev", "lo")
    for route in world.routes:
        ns = world.ns(route.ns) if route.ns is not None else None
        netns.ip(
            ns, "route", "replace", route.dst, "via", route.via, *(("src", route.src) if route.src else ())
        )
    for dst in world.host_routes:
        # Bound to the lab's own interface: they disappear with it.
        netns.ip(None, "route", "replace", dst, "via", _underlay_gateway(world), "dev", HOST_IF)
    for short, ifname in world.masquerade:
        netns.nft(
            world.ns(short),
            "table ip meshsec_lab_nat {\n  chain postrouting {\n"
            "    type nat hook postrouting priority srcnat; policy accept;\n"
            f'    oifname "{ifname}" masquerade\n  }}\n}}\n',
        )
    for nat in world.static_nat:
        netns.nft(
            world.ns(nat.ns),
            "table ip meshsec_lab_nat {\n"
            "  chain prerouting {\n    type nat hook prerouting priority dstnat; policy accept;\n"
            f'    iifname "{nat.ifname}" ip daddr {nat.public} dnat to {nat.private}\n  }}\n'
            "  chain postrouting {\n    type nat hook postrouting priority srcnat; policy accept;\n"
            f'    oifname "{nat.ifname}" ip saddr {nat.private} snat to {nat.public}\n  }}\n}}\n',
        )


def _underlay_gateway(world: World) -> str:
    host_link = next(link for link in world.links if link.a is None)
    assert host_link.b_cidr is not None
    return host_link.b_cidr.split("/")[0]


def leftover_namespaces() -> list[str]:
    """Namespaces carrying the lab's prefix: the lab's by the naming rule, even without a state file."""
    return [ns for ns in netns.namespaces() if ns.startswith(PREFIX)]


def teardown(state: LabState | None) -> list[str]:
    """Stop the lab's processes (by recorded PID), delete its namespaces, host interface and files.

    Returns what could not be removed (empty when everything is gone).
    """
    problems: list[str] = []
    processes = state.processes if state is not None else []
    ours = [p.pid for p in reversed(processes) if p.is_ours()]
    for pid in netns.stop(ours):
        problems.append(f"process {pid} survived SIGKILL")
    namespaces = sorted(set((state.namespaces if state is not None else []) + leftover_namespaces()))
    for ns in namespaces:
        # Anything still running inside a lab namespace was started for the lab (e.g. a charon
        # child); it would keep the namespace alive invisibly.
        for pid in netns.stop(netns.namespace_pids(ns), grace=2.0):
            problems.append(f"process {pid} in {ns} survived SIGKILL")
    for ns in namespaces:
        netns.delete_namespace(ns)
    host_links = set(state.host_links if state is not None else []) | {HOST_IF}
    for ifname in sorted(host_links):
        if netns.link_exists(None, ifname):
            netns.run([netns.IP, "link", "del", ifname], check=False)
    left = leftover_namespaces()
    problems += [f"namespace {ns} still exists" for ns in left]
    problems += [f"host interface {i} still exists" for i in sorted(host_links) if netns.link_exists(None, i)]
    for path in state.files if state is not None else []:
        target = Path(path)
        if target.is_dir():
            shutil.rmtree(target, ignore_errors=True)
        else:
            target.unlink(missing_ok=True)
    return problems
