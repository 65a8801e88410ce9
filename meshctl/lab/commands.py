"""``meshctl lab up|down|status|restart``: the local multi-site lab, end to end."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from meshsec.common.secrets import Secret
from meshsec.meshctl import manifest
from meshsec.meshctl.client import LAB_SOCKET, AdminClient, Target
from meshsec.meshctl.convert import struct_to_dict
from meshsec.meshctl.errors import EXIT_OK, EXIT_USER, MeshctlError, UserError
from meshsec.meshctl.lab import controller, netns, preflight, proof, restart, road_warrior, standalone, world
from meshsec.meshctl.lab.plan import CONTROLLER_ADDRESS, World, lab_world
from meshsec.meshctl.lab.progress import UP_STATES, wait_for_tunnels
from meshsec.meshctl.lab.state import DATA_DIR, RUN_DIR, STATE_FILE, LabState
from meshsec.meshctl.lab.strongswan import Charon, PeerTunnel
from meshsec.meshctl.printable import printable
from meshsec.meshctl.table import Cell, Column, Styled, paint, print_table, use_colour
from meshsec.meshctl.topology import to_dot, write_svg
from meshsec.meshctl.views import STATE_COLOURS, state_name, tunnel_columns, tunnel_ends, tunnel_row
from meshsec.v1 import admin_pb2, common_pb2

ADMIN_SOCKET = Path(LAB_SOCKET)
LOG_DIR = DATA_DIR / "logs"
TOPOLOGY_SVG = DATA_DIR / "topology.svg"
REPO_EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "examples" / "lab-mesh.yaml"


@dataclass
class Timings:
    phases: list[tuple[str, float]] = field(default_factory=list)

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = time.monotonic()
        say(f"{name} ...")
        yield
        self.phases.append((name, time.monotonic() - start))

    def text(self) -> str:
        total = sum(s for _, s in self.phases)
        return ", ".join(f"{n} {s:.1f}s" for n, s in self.phases) + f"; total {total:.1f}s"


def say(text: str) -> None:
    sys.stderr.write(f"{paint('lab:', 'cyan', use_colour(sys.stderr))} {printable(text)}\n")
    sys.stderr.flush()


def run_lab(args: argparse.Namespace) -> int:
    preflight.require_root()
    if args.lab_command == "down":
        return down()
    if args.lab_command == "status":
        return status()
    if args.lab_command == "restart":
        return restart_agents(args)
    return up(args)


# -- down / status ------------------------------------------------------------------------------


def down() -> int:
    state = LabState.load()
    if state is None and not world.leftover_namespaces() and not netns.link_exists(None, "msl-host"):
        say("no lab is running; nothing to remove")
        return EXIT_OK
    problems = world.teardown(state)
    STATE_FILE.unlink(missing_ok=True)
    if problems:
        for problem in problems:
            say(f"could not remove: {problem}")
        return EXIT_USER
    count = len(state.namespaces) if state is not None else 0
    processes = len(state.processes) if state is not None else 0
    say(f"lab removed ({count} namespaces, {processes} processes, the host veth, its files)")
    return EXIT_OK


def status() -> int:
    state = LabState.load()
    if state is None:
        say("no lab is running (`meshctl lab up` builds one)")
        return EXIT_USER
    existing = set(netns.namespaces())
    rows: list[list[Cell]] = [
        [
            p.name,
            str(p.pid),
            Styled("running", "green") if p.is_ours() else Styled("gone", "red"),
            p.ns or "(host)",
            p.log,
        ]
        for p in state.processes
    ]
    print_table([Column("PROCESS"), Column("PID"), Column("STATE"), Column("NAMESPACE"), Column("LOG")], rows)
    missing = [ns for ns in state.namespaces if ns not in existing]
    print(
        f"\nnamespaces: {len(state.namespaces) - len(missing)}/{len(state.namespaces)} present"
        + (f" (missing: {', '.join(missing)})" if missing else "")
    )
    print(f"phase: {state.phase}, agents: {state.mode or '-'}, controller admin socket: {ADMIN_SOCKET}")
    if ADMIN_SOCKET.exists():
        with AdminClient(Target.parse(str(ADMIN_SOCKET)), timeout=5.0) as client:
            print()
            show_tunnels(state, client)
    return EXIT_OK


def restart_agents(args: argparse.Namespace) -> int:
    """Exit 0 only if every pair lost nothing (the target: a restart is no outage)."""
    state = LabState.load()
    nodes = restart.agent_nodes(state) if state is not None and args.all else list(args.nodes)
    if not nodes:
        raise UserError("name the NODE(s) to restart, or --all")
    with AdminClient(Target.parse(str(ADMIN_SOCKET)), timeout=10.0) as client:
        try:
            done, losses = restart.restart(nodes, client, say, timeout=args.lab_timeout)
        except RuntimeError as exc:
            raise UserError(f"lab restart failed: {exc}", hint=f"logs are in {LOG_DIR}") from exc
    rows: list[list[Cell]] = [
        [f"{p.src_site} -> {p.dst}", str(p.sent), str(p.received),
         Styled(str(p.lost), "green" if p.lost == 0 else "red")]
        for p in losses
    ]  # fmt: skip
    print_table([Column("PAIR"), Column("SENT"), Column("RECEIVED"), Column("LOST")], rows)
    lost = sum(p.lost for p in losses)
    say(f"{len(done)} agent restart(s); {lost} packet(s) lost over {len(losses)} pinging pair(s) "
        f"(10 ms interval)")  # fmt: skip
    return EXIT_OK if lost == 0 else EXIT_USER


# -- up -----------------------------------------------------------------------------------------


def up(args: argparse.Namespace) -> int:
    for warning in preflight.check_tools():
        say(f"note: {warning}")
    with_external = not args.no_strongswan and preflight.strongswan_available()
    plan = lab_world(with_external=with_external, datacenters=args.datacenters)
    documents = manifest.load([str(args.filename or REPO_EXAMPLE)])
    check_manifest(plan, documents)
    if LabState.load() is not None or world.leftover_namespaces() or netns.link_exists(None, "msl-host"):
        say("removing the previous lab first")
        if down() != EXIT_OK:
            raise UserError("the previous lab could not be removed completely", hint="see the messages above")
    timings = Timings()
    state = LabState(files=[str(RUN_DIR), str(DATA_DIR)], datacenters=args.datacenters,
                     external=with_external)
    for directory in (RUN_DIR, DATA_DIR, LOG_DIR):
        directory.mkdir(parents=True, exist_ok=True)
    state.save()
    paths = controller.ControllerPaths(DATA_DIR / "controller", ADMIN_SOCKET, LOG_DIR / "controller.log")
    try:
        with timings.phase(
            f"building {len(plan.namespaces)} namespaces (underlay, {len(plan.sites)} sites"
            f"{', external strongSwan gateway' if with_external else ''})"
        ):
            world.build(plan, state)
        ext_psk = Secret(os.urandom(32))
        with timings.phase("starting meshsec-controller (embedded store)"):
            pid = controller.start(paths)
            state.add_process("controller", pid, None, paths.log)
            controller.wait_ready(paths, pid)
        client = AdminClient(Target.parse(str(ADMIN_SOCKET)), timeout=10.0)
        if plan.external is not None:
            with timings.phase("setting the external gateway's PSK (meshctl secret set)"):
                client.put_secret(external_secret_name(documents, plan), ext_psk)
        with timings.phase(f"applying {args.filename or REPO_EXAMPLE}"):
            apply(client, documents)
        mode = "none" if args.no_agents else agent_mode(args.agents)
        if mode == "connected":
            with timings.phase("enrolling one meshsec-agent per gateway node (bootstrap tokens)"):
                start_connected_agents(plan, state, client, pick_dataplane(plan))
                wait_enrolled(state, client, [s.node for s in plan.sites], timeout=30.0)
        tunnels = client.tunnels()
        if mode == "none":
            state.phase = "up"
            state.save()
            print_tunnels(tunnels, {})
            say(f"done without agents ({timings.text()}); admin socket {ADMIN_SOCKET}")
            return EXIT_OK
        wanted = [t for t in tunnels if plan.external is not None or not is_external(t)]
        if plan.external is not None:
            with timings.phase("starting the external strongSwan gateway (extdc)"):
                start_charon(plan, state, tunnels, ext_psk)
        if mode == "standalone":
            with timings.phase("starting one standalone meshsec-agent per gateway node (interim mode)"):
                start_standalone_agents(plan, state, client, wanted, ext_psk, pick_dataplane(plan))
        with timings.phase(f"waiting for {len(wanted)} tunnels (up to {args.lab_timeout:.0f}s)"):
            waited = wait_for_tunnels(lambda: watched_view(state, client, wanted), args.lab_timeout)
        with timings.phase("proving traffic between workload hosts"):
            results = [proof.run_probe(p) for p in proof.probes(plan, wanted)]
        rw = plan.road_warrior
        if rw is not None and mode == "connected" and serves_road_warriors(documents, rw.gateway_node):
            what = f"connecting road warrior {rw.ns} to {rw.gateway_node} (meshctl's swanctl.conf)"
            with timings.phase(what):
                vip, ping = road_warrior.connect(plan, state, client, DATA_DIR, RUN_DIR)
                say(f"road warrior {rw.ns} ({rw.user}/{rw.device}) got {vip} from the controller's pool")
                results.append(ping)
        write_topology(client)
        state.phase = "up"
        state.save()
        print()
        show_tunnels(state, client)
        print()
        print_probes(results)
        print()
        failed = waited.stuck or any(not r.ok for r in results)
        report(plan, state, waited.stuck, wanted, timings)
        client.close()
        return EXIT_USER if failed else EXIT_OK
    except (RuntimeError, OSError, MeshctlError, netns.CommandFailed, subprocess.SubprocessError) as exc:
        message = exc.message if isinstance(exc, MeshctlError) else str(exc)
        raise UserError(
            f"lab up failed: {message}",
            hint=f"logs are in {LOG_DIR}; `meshctl lab down` removes what was built",
        ) from exc


def apply(client: AdminClient, documents: Sequence[manifest.Document]) -> None:
    response = client.apply([d.resource for d in documents], labels=[d.where for d in documents])
    for result in response.results:
        action = admin_pb2.ApplyAction.Name(result.action).removeprefix("APPLY_ACTION_").lower()
        say(f"  {result.kind.lower()}/{result.name} {action}")


def wait_enrolled(state: LabState, client: AdminClient, nodes: Sequence[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    missing = set(nodes)
    while missing and time.monotonic() < deadline:
        fail_on_dead_process(state)
        enrolled = {
            r.metadata.name
            for r in client.list_resources("Node")
            if r.status.fields.get("phase", None) is not None and r.status["phase"] == "Enrolled"
        }
        missing = set(nodes) - enrolled
        if missing:
            time.sleep(0.3)
    if missing:
        logs = ", ".join(str(LOG_DIR / f"{n}.log") for n in sorted(missing))
        raise RuntimeError(
            f"node(s) {', '.join(sorted(missing))} did not enroll in {timeout:.0f}s; see {logs}"
        )


def check_manifest(plan: World, documents: Sequence[manifest.Document]) -> None:
    """The manifest's nodes must be the lab's gateway namespaces, or no agent could serve them, and
    every gateway the lab runs needs its Node and Site in the manifest, or it could not enroll."""
    nodes = [d.resource.metadata.name for d in documents if d.resource.kind == "Node"]
    unknown = [n for n in nodes if plan.site_of_node(n) is None]
    known = ", ".join(s.node for s in plan.sites)
    if unknown:
        raise UserError(
            f"the lab has no namespace for node(s) {', '.join(unknown)}",
            hint=f"the lab's gateway nodes are {known} (see deploy/examples/lab-mesh.yaml; "
            "--datacenters N adds dc3..dcN)",
        )
    sites = {d.resource.metadata.name for d in documents if d.resource.kind == "Site"}
    missing = [f"Node {s.node}" for s in plan.sites if s.node not in nodes]
    missing += [f"Site {s.name}" for s in plan.sites if s.name not in sites]
    if missing:
        raise UserError(
            f"the manifest has no {', '.join(missing)}, which the lab runs a gateway for",
            hint=f"pass -f with a manifest naming every lab gateway node ({known}), or fewer --datacenters",
        )


def serves_road_warriors(documents: Sequence[manifest.Document], node: str) -> bool:
    """Whether the manifest has a RemoteAccessPool and a user for the lab's road warrior."""
    kinds = {d.resource.kind for d in documents}
    return {"RemoteAccessPool", "RemoteAccessUser"} <= kinds and any(
        d.resource.kind == "Node" and d.resource.metadata.name == node for d in documents
    )


def external_secret_name(documents: Sequence[manifest.Document], plan: World) -> str:
    assert plan.external is not None
    for doc in documents:
        if doc.resource.kind == "ExternalGateway" and doc.resource.metadata.name == plan.external.name:
            auth = struct_to_dict(doc.resource.spec).get("auth") or {}
            ref = auth.get("pskSecretRef") if isinstance(auth, Mapping) else None
            if isinstance(ref, str) and ref:
                return ref
    raise UserError(f"the manifest has no ExternalGateway {plan.external.name} with spec.auth.pskSecretRef")


def is_external(info: admin_pb2.TunnelInfo) -> bool:
    return info.desired.peer_kind == common_pb2.PEER_KIND_EXTERNAL_GATEWAY


def start_charon(plan: World, state: LabState, tunnels: Sequence[admin_pb2.TunnelInfo], psk: Secret) -> None:
    ext = plan.external
    assert ext is not None
    peers = []
    for info in tunnels:
        if not is_external(info) or info.desired.peer_name != ext.name:
            continue
        d = info.desired
        child = d.children[0]
        peers.append(
            PeerTunnel(
                name=info.tunnel_id,
                local_addr=ext.address,
                remote_addr="%any",
                local_id=d.remote_id.value,
                remote_id=d.local_id.value,
                ike_proposals=tuple(d.ike_proposals),
                esp_proposals=tuple(d.esp_proposals),
                local_ts=tuple(ts.cidr for ts in child.remote_ts),
                remote_ts=tuple(ts.cidr for ts in child.local_ts),
                initiate=not d.initiator,
                rekey_seconds=int(d.ike_lifetimes.soft_seconds or 14400),
                child_rekey_seconds=int(child.lifetimes.soft_seconds or 3600),
            )
        )
    charon = Charon(plan.ns(ext.ns), DATA_DIR / "extdc", RUN_DIR)
    charon.write(peers, psk)
    pid = charon.start()
    state.add_process("charon/extdc", pid, plan.ns(ext.ns), charon.log)
    charon.load()


def node_addresses(plan: World, client: AdminClient) -> dict[str, standalone.NodeAddresses]:
    found: dict[str, standalone.NodeAddresses] = {}
    for resource in client.list_resources("Node"):
        site = plan.site_of_node(resource.metadata.name)
        if site is None:
            continue
        endpoints = struct_to_dict(resource.spec).get("endpoints") or {}
        public = (
            tuple(str(a) for a in endpoints.get("public") or []) if isinstance(endpoints, Mapping) else ()
        )
        found[site.node] = standalone.NodeAddresses(site.node, site.node_address, public)
    return found


def agent_program() -> str:
    program = preflight.meshsec_program("meshsec-agent")
    if program is None:
        raise UserError("meshsec-agent is not installed", hint="pip install -e . (bash scripts/install.sh)")
    return program


def agent_mode(requested: str) -> str:
    """``connected`` (enrolled with a token, desired state from the controller) when this
    meshsec-agent has ``run``; otherwise the interim ``standalone`` mode."""
    if requested != "auto":
        return requested
    probe = subprocess.run([agent_program(), "run", "--help"], capture_output=True, timeout=30, check=False)
    return "connected" if probe.returncode == 0 else "standalone"


def pick_dataplane(plan: World) -> str:
    """The best data plane this kernel supports, decided here rather than by each agent's "auto"."""
    dataplane = "kernel" if netns.kernel_has_esp(plan.ns(plan.sites[0].gateway_ns)) else "userspace"
    why = "the kernel has ESP" if dataplane == "kernel" else "this kernel has no ESP"
    say(f"  data plane: {dataplane} ({why})")
    return dataplane


def start_connected_agents(plan: World, state: LabState, client: AdminClient, dataplane: str) -> None:
    """One ``meshsec-agent run`` per gateway node, enrolling with a bootstrap token over the
    bootstrap listener (pinning the CA by the hash the token came with). Each enrollment adopts
    the Node the manifest declared: its spec (endpoints, ikeId) stays, the certificate names the
    ikeId, the agent's facts are recorded."""
    program = agent_program()
    state.mode = "connected"
    controller_ca = DATA_DIR / "controller" / "ca.pem"
    for site in plan.sites:
        request = admin_pb2.CreateBootstrapTokenRequest(
            node_name=site.node,
            site=site.name,
            ttl_seconds=3600,
            uses=1,
        )
        token = client.create_token(request)
        workdir = DATA_DIR / "agents" / site.node
        token_file = workdir / "token"
        standalone.write_secret(token_file, token.token + "\n")
        argv = [program, "run",
                "--controller", f"{CONTROLLER_ADDRESS}:{controller.MTLS_PORT}",
                "--bootstrap", f"{CONTROLLER_ADDRESS}:{controller.BOOTSTRAP_PORT}",
                "--node", site.node, "--state-dir", str(workdir / "state"), "--token-file", str(token_file),
                "--ca-file", str(controller_ca), "--ca-sha256", token.ca_cert_sha256,
                "--dataplane", dataplane, "--address", site.node_address,
                "--status-socket", str(RUN_DIR / "agents" / f"{site.node}.sock")]  # fmt: skip
        if dataplane == "userspace":
            argv += start_dataplane_daemon(plan, state, site.node, site.gateway_ns)
        log = LOG_DIR / f"{site.node}.log"
        pid = netns.popen(plan.ns(site.gateway_ns), argv, log)
        state.add_process(f"agent/{site.node}", pid, plan.ns(site.gateway_ns), log, argv)


def start_dataplane_daemon(plan: World, state: LabState, node: str, ns: str) -> list[str]:
    """The userspace data plane as its own lab process (as systemd's meshsec-dataplane.service
    runs it), so `meshctl lab restart` restarts the agent while the packets keep flowing and
    `lab down` stops it by PID; returns the agent's options to connect to it."""
    program = preflight.meshsec_program("meshsec-dataplane")
    if program is None:
        raise UserError("meshsec-dataplane is not installed",
                        hint="pip install -e . (bash scripts/install.sh)")  # fmt: skip
    sock = RUN_DIR / "agents" / f"{node}-dataplane.sock"
    log = LOG_DIR / f"{node}-dataplane.log"
    pid = netns.popen(plan.ns(ns), [program, "--socket", str(sock), "--tun-name", "meshsec0"], log)
    state.add_process(f"dataplane/{node}", pid, plan.ns(ns), log)
    return ["--userspace-daemon", "connect", "--dataplane-socket", str(sock)]


def start_standalone_agents(
    plan: World,
    state: LabState,
    client: AdminClient,
    tunnels: Sequence[admin_pb2.TunnelInfo],
    ext_psk: Secret,
    dataplane: str,
) -> None:
    program = agent_program()
    psks = {t.tunnel_id: ext_psk if is_external(t) else Secret(os.urandom(32)) for t in tunnels}
    configs = standalone.agent_configs(
        tunnels, node_addresses(plan, client), psks, RUN_DIR / "agents", dataplane
    )
    state.mode = "standalone"
    for node, document in sorted(configs.items()):
        site = plan.site_of_node(node)
        assert site is not None
        config = DATA_DIR / "agents" / node / "agent.yaml"
        standalone.write_config(config, document)
        log = LOG_DIR / f"{node}.log"
        pid = netns.popen(plan.ns(site.gateway_ns), [program, "--config", str(config)], log)
        state.add_process(f"agent/{node}", pid, plan.ns(site.gateway_ns), log)


def agent_states(state: LabState) -> dict[str, dict[str, str]]:
    """{node: {tunnel id: state}} from each running agent's status socket."""
    from meshsec.agent.standalone.status import query_status

    found: dict[str, dict[str, str]] = {}
    for proc in state.processes:
        if not proc.name.startswith("agent/"):
            continue
        node = proc.name.removeprefix("agent/")
        try:
            found[node] = standalone.tunnel_states(
                query_status(RUN_DIR / "agents" / f"{node}.sock", timeout=2.0)
            )
        except (OSError, ValueError):
            found[node] = {}
    return found


def tunnel_view(
    state: LabState, client: AdminClient, tunnels: Sequence[admin_pb2.TunnelInfo]
) -> dict[str, str]:
    """{tunnel label: state}: what the controller merged from the agents' reports, or (standalone
    agents do not report) what the agents' status sockets say."""
    if state.mode == "connected":
        wanted = {t.tunnel_id for t in tunnels}
        return {tunnel_ends(t): state_name(t.state) for t in client.tunnels() if t.tunnel_id in wanted}
    return labelled(tunnels, agent_states(state))


def watched_view(
    state: LabState, client: AdminClient, tunnels: Sequence[admin_pb2.TunnelInfo]
) -> dict[str, str]:
    """tunnel_view, but a lab process that died ends the wait at once, with its log."""
    fail_on_dead_process(state)
    return tunnel_view(state, client, tunnels)


def fail_on_dead_process(state: LabState) -> None:
    for proc in state.processes:
        if not proc.is_ours():
            log = controller.tail(Path(proc.log))
            raise RuntimeError(f"{proc.name} (pid {proc.pid}) exited; its log {proc.log} ends with:\n{log}")


def show_tunnels(state: LabState, client: AdminClient) -> None:
    tunnels = client.tunnels()
    if state.mode == "connected":
        print_table(tunnel_columns(False), [tunnel_row(t, wide=False) for t in tunnels])
    else:
        print_tunnels(tunnels, agent_states(state))


def merged_state(info: admin_pb2.TunnelInfo, agents: Mapping[str, Mapping[str, str]]) -> str:
    """As the controller merges reports: every reporting (node) end must be ESTABLISHED."""
    ends = [e.name for e in info.ends if e.kind == common_pb2.PEER_KIND_NODE]
    states = [agents.get(n, {}).get(info.tunnel_id, "DOWN") or "DOWN" for n in ends]
    if any(s == "FAILED" for s in states):
        return "FAILED"
    if states and all(s in UP_STATES for s in states):
        return "ESTABLISHED"
    return "CONNECTING" if any(s not in ("DOWN", "") for s in states) else "DOWN"


def labelled(
    tunnels: Sequence[admin_pb2.TunnelInfo], agents: Mapping[str, Mapping[str, str]]
) -> dict[str, str]:
    return {tunnel_ends(t): merged_state(t, agents) for t in tunnels}


def print_tunnels(tunnels: Sequence[admin_pb2.TunnelInfo], agents: Mapping[str, Mapping[str, str]]) -> None:
    rows: list[list[Cell]] = []
    for t in tunnels:
        controller_state = common_pb2.TunnelState.Name(t.state).removeprefix("TUNNEL_STATE_")
        agent_state = merged_state(t, agents) if agents else "-"
        rows.append(
            [
                tunnel_ends(t),
                t.policy,
                Styled(agent_state, STATE_COLOURS.get(agent_state, "")),
                controller_state,
                t.tunnel_id,
            ]
        )
    print_table(
        [
            Column("TUNNEL"),
            Column("POLICY"),
            Column("AGENTS SAY", False),
            Column("CONTROLLER SAYS", False),
            Column("ID"),
        ],
        rows,
    )


def print_probes(results: Sequence[proof.ProbeResult]) -> None:
    rows: list[list[Cell]] = []
    for r in results:
        p = r.probe
        expect = "reply" if p.expect_reply else "no route (no tunnel by policy)"
        verdict = Styled("ok", "green") if r.ok else Styled("FAILED", "red")
        rows.append([f"{p.src_site} -> {p.dst_site}", p.dst, expect, f"{r.received}/{r.sent}", verdict])
    print_table(
        [Column("SITES"), Column("TO"), Column("EXPECT"), Column("REPLIES", False), Column("", False)], rows
    )


def write_topology(client: AdminClient) -> None:
    source = to_dot(client.topology())
    TOPOLOGY_SVG.with_suffix(".dot").write_text(source)
    try:
        write_svg(source, TOPOLOGY_SVG)
    except MeshctlError as exc:
        say(f"no SVG: {exc.message} ({exc.hint}); DOT is in {TOPOLOGY_SVG.with_suffix('.dot')}")


def report(
    plan: World,
    state: LabState,
    stuck: Mapping[str, str],
    tunnels: Sequence[admin_pb2.TunnelInfo],
    timings: Timings,
) -> None:
    for label, tstate in sorted(stuck.items()):
        info = next(t for t in tunnels if tunnel_ends(t) == label)
        logs = [str(LOG_DIR / f"{e.name}.log") for e in info.ends if e.kind == common_pb2.PEER_KIND_NODE]
        if is_external(info):
            logs.append(str(DATA_DIR / "extdc" / "charon.log"))
        say(f"STUCK {label} ({info.tunnel_id}) is {tstate}; logs: {', '.join(logs)}")
    say(f"timings: {timings.text()}")
    say(f"agents: {state.mode} meshsec-agent per gateway node (see docs/lab.md); logs in {LOG_DIR}")
    say(f"topology picture: {TOPOLOGY_SVG} (DOT: {TOPOLOGY_SVG.with_suffix('.dot')})")
    say(
        f"meshctl uses the lab's controller ({ADMIN_SOCKET}) when none runs at the default socket: "
        "try `meshctl get tunnels -o wide`, `meshctl describe node dc1-gw1`, `meshctl events`"
    )
    say("`meshctl lab status` shows it again, `meshctl lab down` removes it")
