"""The Helm chart, rendered and linted offline with helm-python-sdk (Helm v4's Go code), every
manifest validated against Kubernetes' own schemas (kubernetes-validate, strict: unknown fields
fail) for the oldest and newest supported versions, and the rendered command lines parsed by the
real controller, agent and operator argument parsers."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from meshsec.agent.cli import build_parser as agent_parser
from meshsec.controller.cli import _serve_parser as controller_parser
from meshsec.controller.operator import crds
from meshsec.controller.resources import Kind

helm = pytest.importorskip("helm_python", reason="helm-python-sdk not installed (k8s test dependency)")
kv = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate not installed")
operator_main = pytest.importorskip("meshsec.controller.operator.__main__", reason="kopf not installed")

CHART = Path(__file__).resolve().parents[2] / "deploy/helm/meshsec"
KUBE_VERSIONS = ("1.25.0", "1.37.0")  # Chart.yaml's kubeVersion floor, the newest schemas bundled
NAMESPACE = "meshsec-system"


def render(values: dict[str, Any] | None = None, name: str = "mesh") -> dict[str, Any]:
    """Every rendered object by "Kind/name", plus NOTES under "NOTES"."""
    with helm.Chart.load(str(CHART)) as chart:
        files = chart.render(values or {}, name=name, namespace=NAMESPACE, is_install=True)
        crd_files = chart.crds
    out: dict[str, Any] = {}
    for path, text in files.items():
        if path.endswith("NOTES.txt"):
            out["NOTES"] = text
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                out[f"{doc['kind']}/{doc['metadata']['name']}"] = doc
    for item in crd_files:
        doc = yaml.safe_load(item.get("data") or item.get("content") or "")
        if doc:
            out[f"{doc['kind']}/{doc['metadata']['name']}"] = doc
    return out


def objects(rendered: dict[str, Any]) -> Iterator[dict[str, Any]]:
    return (v for k, v in rendered.items() if k != "NOTES")


def container(pod_owner: dict[str, Any], name: str) -> dict[str, Any]:
    containers = pod_owner["spec"]["template"]["spec"]["containers"]
    return next(c for c in containers if c["name"] == name)


def test_lint_strict_has_no_errors() -> None:
    result = helm.lint(str(CHART), strict=True)
    assert result["errors"] == []
    assert [m for m in result["messages"] if m["severity"] > 1] == []


@pytest.mark.parametrize(
    "values",
    [
        {},
        {
            "store": {"type": "etcd", "etcd": {"endpoints": ["etcd-0:2379", "etcd-1:2379"]}},
            "controller": {"replicas": 3},
        },
        {"metrics": {"enabled": False}, "operator": {"enabled": False}, "agent": {"privileged": True}},
        {"controller": {"enabled": False}, "agent": {"controller": {"address": "198.18.0.1:7443"}}},
        {"agent": {"bootstrap": {"site": "dc1"}}},
    ],
    ids=["default", "etcd-ha", "minimal", "agent-only", "managed-bootstrap"],
)
@pytest.mark.parametrize("version", KUBE_VERSIONS)
def test_rendered_manifests_validate(values: dict[str, Any], version: str) -> None:
    rendered = render(values)
    kinds = set()
    for obj in objects(rendered):
        kinds.add(obj["kind"])
        if obj["apiVersion"] == "kopf.dev/v1":
            continue  # a custom resource: checked against its CRD below
        kv.validate(obj, version, strict=True)
    assert "CustomResourceDefinition" in kinds


def test_default_install_embedded_store() -> None:
    r = render()
    deploy = r["Deployment/mesh-meshsec-controller"]
    assert deploy["spec"]["replicas"] == 1
    assert deploy["spec"]["strategy"] == {"type": "Recreate"}
    volumes = {v["name"]: v for v in deploy["spec"]["template"]["spec"]["volumes"]}
    assert volumes["data"]["persistentVolumeClaim"]["claimName"] == "mesh-meshsec-store"
    assert r["PersistentVolumeClaim/mesh-meshsec-store"]["spec"]["resources"]["requests"]["storage"] == "1Gi"
    ctl = container(deploy, "controller")
    args = controller_parser().parse_args(ctl["args"])
    assert args.store == "embedded:/var/lib/meshsec/controller/store.log"
    assert args.admin_socket == "/run/meshsec/admin.sock"
    assert f"mesh-meshsec.{NAMESPACE}.svc" in args.server_name
    op = container(deploy, "operator")
    assert op["command"] == ["python", "-m", "meshsec.controller.operator"]
    op_args = operator_main.build_parser().parse_args(op["args"])
    assert op_args.admin_socket == args.admin_socket
    assert op_args.peering is None  # one replica: standalone
    # Both containers see the socket's directory, and run as the same user (socket mode 0600).
    mounts = {c["name"]: {m["mountPath"] for m in c["volumeMounts"]} for c in (ctl, op)}
    assert all("/run/meshsec" in m for m in mounts.values())
    assert deploy["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == 10001
    assert "PodDisruptionBudget/mesh-meshsec-controller" not in r
    assert "ClusterKopfPeering/mesh-meshsec" not in r


def test_service_matches_what_agents_dial() -> None:
    r = render()
    svc = r["Service/mesh-meshsec"]
    ports = {p["name"]: p["port"] for p in svc["spec"]["ports"]}
    assert ports == {"mtls": 7443, "bootstrap": 7444, "metrics": 9443}
    deploy = r["Deployment/mesh-meshsec-controller"]
    assert svc["spec"]["selector"].items() <= deploy["spec"]["template"]["metadata"]["labels"].items()
    agent = r["DaemonSet/mesh-meshsec-agent"]
    args = agent_parser().parse_args(
        container(agent, "agent")["command"][1:] + container(agent, "agent")["args"]
    )
    host = f"mesh-meshsec.{NAMESPACE}.svc"
    assert args.controller == f"{host}:{ports['mtls']}"
    assert args.bootstrap == f"{host}:{ports['bootstrap']}"
    ctl_args = controller_parser().parse_args(container(deploy, "controller")["args"])
    assert host in ctl_args.server_name  # the certificate names what agents dial


def test_agent_daemonset() -> None:
    agent = render()["DaemonSet/mesh-meshsec-agent"]
    pod = agent["spec"]["template"]["spec"]
    assert pod["hostNetwork"] is True
    assert pod["dnsPolicy"] == "ClusterFirstWithHostNet"
    c = container(agent, "agent")
    assert set(c["securityContext"]["capabilities"]["add"]) >= {"NET_ADMIN", "NET_RAW"}
    assert "privileged" not in c["securityContext"]
    env = {e["name"]: e for e in c["env"]}
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    args = agent_parser().parse_args(c["command"][1:] + c["args"])
    assert args.node == "$(NODE_NAME)"
    assert args.dataplane == "auto"
    assert args.leave_on_stop is False  # a rollout's SIGTERM is a restart: no DELETE, SAs stay
    leaving = container(render({"agent": {"leaveOnStop": True}})["DaemonSet/mesh-meshsec-agent"], "agent")
    assert agent_parser().parse_args(leaving["command"][1:] + leaving["args"]).leave_on_stop is True
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["tun"]["hostPath"] == {"path": "/dev/net/tun", "type": "CharDevice"}
    assert volumes["state"]["hostPath"]["path"] == "/var/lib/meshsec/agent"
    assert volumes["bootstrap"]["secret"]["secretName"] == "meshsec-agent-bootstrap"
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    assert str(args.token_file).startswith(mounts["bootstrap"])
    assert str(args.ca_file).startswith(mounts["bootstrap"])
    assert str(args.state_dir) == mounts["state"]
    assert mounts["tun"] == "/dev/net/tun"


def test_userspace_data_plane_is_a_second_container_sharing_the_socket() -> None:
    """The agent container's restart must leave the userspace packet path running: it lives in
    the `dataplane` container, reached over a socket on a pod-lifetime volume both mount."""
    from meshsec.agent.dataplane.userspace.daemon import parser as daemon_parser

    agent = render()["DaemonSet/mesh-meshsec-agent"]
    pod = agent["spec"]["template"]["spec"]
    a, d = container(agent, "agent"), container(agent, "dataplane")
    args = agent_parser().parse_args(a["command"][1:] + a["args"])
    daemon = daemon_parser().parse_args(d["args"])
    assert d["command"] == ["meshsec-dataplane"]
    assert args.userspace_daemon == "connect"  # the kubelet starts the daemon, not the agent
    assert args.dataplane_socket == daemon.socket
    assert daemon.tun_name == args.tun_name == "meshsec0"
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes["dataplane-socket"]  # lives as long as the pod, not a container
    for c in (a, d):
        mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
        assert str(daemon.socket).startswith(mounts["dataplane-socket"] + "/")
    assert {m["name"]: m["mountPath"] for m in d["volumeMounts"]}["tun"] == "/dev/net/tun"
    assert set(d["securityContext"]["capabilities"]["add"]) == {"NET_ADMIN", "NET_RAW"}

    kernel = render({"agent": {"dataplane": "kernel"}})["DaemonSet/mesh-meshsec-agent"]
    names = [c["name"] for c in kernel["spec"]["template"]["spec"]["containers"]]
    assert names == ["agent"]
    inside = render({"agent": {"userspace": {"sidecar": False}}})["DaemonSet/mesh-meshsec-agent"]
    c = container(inside, "agent")
    assert [x["name"] for x in inside["spec"]["template"]["spec"]["containers"]] == ["agent"]
    assert agent_parser().parse_args(c["command"][1:] + c["args"]).userspace_daemon == "off"


def test_etcd_ha() -> None:
    r = render(
        {
            "store": {"type": "etcd", "etcd": {"endpoints": ["etcd-0:2379", "etcd-1:2379"]}},
            "controller": {"replicas": 3},
        }
    )
    deploy = r["Deployment/mesh-meshsec-controller"]
    assert deploy["spec"]["replicas"] == 3
    assert "strategy" not in deploy["spec"]
    assert "PersistentVolumeClaim/mesh-meshsec-store" not in r
    volumes = {v["name"]: v for v in deploy["spec"]["template"]["spec"]["volumes"]}
    assert "emptyDir" in volumes["data"]
    args = controller_parser().parse_args(container(deploy, "controller")["args"])
    assert args.store == "etcd://etcd-0:2379,etcd-1:2379"
    assert args.replica == "$(POD_NAME)"
    op_args = operator_main.build_parser().parse_args(container(deploy, "operator")["args"])
    assert op_args.peering == "mesh-meshsec"
    peering = r["ClusterKopfPeering/mesh-meshsec"]
    peering_crd = r["CustomResourceDefinition/clusterkopfpeerings.kopf.dev"]
    assert (
        peering["apiVersion"]
        == f"{peering_crd['spec']['group']}/{peering_crd['spec']['versions'][0]['name']}"
    )
    assert r["PodDisruptionBudget/mesh-meshsec-controller"]["spec"]["minAvailable"] == 1


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"controller": {"replicas": 2}}, "store.type=embedded runs exactly one controller replica"),
        ({"store": {"type": "etcd"}}, "store.type=etcd needs store.etcd.endpoints"),
        # values.schema.json catches these before any template runs.
        ({"store": {"type": "consul"}}, "/store/type': value must be one of 'embedded', 'etcd'"),
        ({"controler": {"replicas": 3}}, "additional properties 'controler' not allowed"),
        ({"agent": {"dataplane": "xfrm"}}, "/agent/dataplane': value must be one of"),
        ({"store": {"etcd": {"endpoints": ["http://etcd:2379"]}}}, "/store/etcd/endpoints/0"),
    ],
)
def test_bad_values_fail_rendering(values: dict[str, Any], message: str) -> None:
    with pytest.raises(Exception, match=re.escape(message)):
        render(values)


def test_operator_rbac_covers_the_crds() -> None:
    r = render()
    role = r["ClusterRole/mesh-meshsec-operator"]
    granted = {
        (g, res): set(rule["verbs"])
        for rule in role["rules"]
        for g in rule["apiGroups"]
        for res in rule["resources"]
    }
    for kind in Kind:
        plural = crds.NAMES[kind].plural
        assert {"get", "list", "watch", "patch"} <= granted[(crds.GROUP, plural)]
        assert "patch" in granted[(crds.GROUP, f"{plural}/status")]
    binding = r["ClusterRoleBinding/mesh-meshsec-operator"]
    assert (
        binding["subjects"][0]["name"]
        == r["Deployment/mesh-meshsec-controller"]["spec"]["template"]["spec"]["serviceAccountName"]
    )


def test_chart_ships_the_generated_crds() -> None:
    r = render()
    for kind in Kind:
        name = f"{crds.NAMES[kind].plural}.{crds.GROUP}"
        assert r[f"CustomResourceDefinition/{name}"] == crds.crd(kind)


def test_agent_only_release() -> None:
    r = render(
        {
            "controller": {"enabled": False},
            "agent": {
                "controller": {
                    "address": "198.18.0.1:7443",
                    "bootstrapAddress": "198.18.0.1:7444",
                    "serverName": "ctl.meshsec.test",
                }
            },
        }
    )
    assert not [k for k in r if k.startswith(("Deployment/", "Service/", "ClusterRole"))]
    c = container(r["DaemonSet/mesh-meshsec-agent"], "agent")
    args = agent_parser().parse_args(c["command"][1:] + c["args"])
    assert (args.controller, args.bootstrap, args.server_name) == (
        "198.18.0.1:7443",
        "198.18.0.1:7444",
        "ctl.meshsec.test",
    )


def test_notes_tell_how_to_create_the_bootstrap_secret() -> None:
    notes = render()["NOTES"]
    assert "meshsec-controller token create --site SITE" in notes
    assert "create secret generic meshsec-agent-bootstrap" in notes
    assert f"mesh-meshsec.{NAMESPACE}.svc" in notes


def test_image_provides_the_chart_commands() -> None:
    """deploy/Dockerfile cannot be built here (no container engine); check what it relies on."""
    import tomllib

    root = CHART.parents[2]
    dockerfile = (root / "deploy/Dockerfile").read_text()
    for line in dockerfile.splitlines():
        if line.startswith("COPY ") and "--from" not in line:
            for source in line.split()[1:-1]:
                assert (root / source).exists(), source
    scripts = tomllib.loads((root / "pyproject.toml").read_text())["project"]["scripts"]
    r = render()
    commands = {
        container(r["Deployment/mesh-meshsec-controller"], "controller")["command"][0],
        container(r["DaemonSet/mesh-meshsec-agent"], "agent")["command"][0],
        container(r["DaemonSet/mesh-meshsec-agent"], "dataplane")["command"][0],
    }
    assert commands <= set(scripts)
    # Every role's packages, from the lock that the operator extra (kopf, kubernetes) is part of.
    assert "--require-hashes -r requirements/all.txt" in dockerfile
    assert "--require-hashes -r requirements/build.txt" in dockerfile


def test_operator_keeps_the_bootstrap_secret_when_asked() -> None:
    assert "Role/mesh-meshsec-bootstrap" not in render()
    r = render({"agent": {"bootstrap": {"site": "dc1", "uses": 50, "ttlSeconds": 7200}}})
    deploy = r["Deployment/mesh-meshsec-controller"]
    op = container(deploy, "operator")
    args = operator_main.build_parser().parse_args(op["args"])
    assert (args.bootstrap_site, args.bootstrap_uses, args.bootstrap_ttl) == ("dc1", 50, 7200)
    assert args.bootstrap_namespace == "$(POD_NAMESPACE)"
    assert {e["name"]: e for e in op["env"]}["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == (
        "metadata.namespace"
    )
    # The operator reads the ca.pem the controller writes into its data directory.
    ctl_args = controller_parser().parse_args(container(deploy, "controller")["args"])
    op_mounts = {m["mountPath"]: m for m in op["volumeMounts"]}
    data_mount = op_mounts[str(ctl_args.data_dir)]
    assert data_mount["readOnly"] is True and args.ca_file == ctl_args.data_dir / "ca.pem"
    # The Secret it writes is the one the agents mount, and its Role allows exactly that.
    agent = r["DaemonSet/mesh-meshsec-agent"]
    volumes = {v["name"]: v for v in agent["spec"]["template"]["spec"]["volumes"]}
    assert volumes["bootstrap"]["secret"]["secretName"] == args.bootstrap_secret
    role = r["Role/mesh-meshsec-bootstrap"]
    assert role["metadata"]["namespace"] == NAMESPACE
    named = next(rule for rule in role["rules"] if rule.get("resourceNames"))
    assert named["resourceNames"] == [args.bootstrap_secret] and set(named["verbs"]) == {"get", "patch"}
    binding = r["RoleBinding/mesh-meshsec-bootstrap"]
    assert binding["subjects"][0]["name"] == deploy["spec"]["template"]["spec"]["serviceAccountName"]
    assert "keeps that Secret current with a token for Site dc1" in r["NOTES"]
