"""The agent's side of the data-plane daemon, alone: a process that drives `DaemonDataPlane` (the
agent's userspace backend) against a running `meshsec-dataplane`, for the restart tests.

    daemon_agent_script.py SOCKET install PLAN.json   install SAs and policies, then hold on
    daemon_agent_script.py SOCKET adopt [PLAN.json]   adopt what the daemon holds, then hold on

With a plan that names `encap_port`, it binds that UDP port (or takes the socket the daemon kept,
as the IKE adapter does) and lends it to the daemon; IKE messages that come back on the channel
are printed as `ike HEX`. Every result is one JSON line on stdout, then it waits to be killed.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from meshsec.agent.adapters import udp
from meshsec.agent.dataplane.userspace.client import DaemonDataPlane
from meshsec.agent.dataplane.userspace.jsoncodec import policy_from_json, sa_from_json


def say(**fields: Any) -> None:
    print(json.dumps(fields), flush=True)


async def main(socket_path: str, mode: str, plan_file: str | None) -> None:
    plan: dict[str, Any] = json.loads(Path(plan_file).read_text()) if plan_file else {}
    dp = DaemonDataPlane(Path(socket_path), connect_timeout=10)
    await dp.start()
    if mode == "adopt":
        owned = await dp.adopt()
        say(adopted_sas=sorted(s.spi for s in owned.sas), adopted_policies=len(owned.policies),
            max_reqid=owned.max_reqid)  # fmt: skip
    else:
        for sa in plan.get("sas", []):
            await dp.add_sa(sa_from_json(sa))
        for policy in plan.get("policies", []):
            await dp.ensure_policy(policy_from_json(policy))
        reserved = []
        for sa in map(sa_from_json, plan.get("reserve", [])):
            reserved.append(await dp.allocate_spi(sa.id.protocol, sa.src, sa.id.dst))
        say(installed=len(plan.get("sas", [])), reserved=reserved)
    port = plan.get("encap_port")
    if port:
        held = dp.held_encap_socket("0.0.0.0", int(port))
        sock = held or udp.open_udp_socket("0.0.0.0", int(port))
        await dp.attach_encap_socket(sock, lambda msg, _, remote: say(ike=msg.hex(), remote=list(remote)))
        say(encap_socket="held" if held is not None else "bound")
    events = []
    async for ev in dp.events():  # until killed (or the daemon goes: DaemonLost ends it)
        events.append(ev)
        say(event=repr(ev))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else None))
