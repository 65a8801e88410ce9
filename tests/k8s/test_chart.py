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
KUBE_VERSIONS = ("1.31.0", "1.37.0")  # Chart.yaml's kubeVersion floor, the newest schemas bundled
NAMESPACE = "meshsec-system"
ROOT = CHART.parents[2]
# Custom resources: checked against their own CRDs (kopf's) or below (the Prometheus Operator's).
CUSTOM_GROUPS = ("kopf.dev/", "monitoring.coreos.com/")
EVERYTHING: dict[str, Any] = {
    "metrics": {
        "serviceMonitor": {"enabled": True, "labels": {"release": "prom"}},
        "prometheusRule": {"enabled": True},
    },
    "cluster": {"site": "cluster", "serviceCIDRs": ["198.19.240.0/20"], "siteLabels": {"kind": "k8s"}},
    "controller": {"priorityClassName": "system-cluster-critical", "extraArgs": ["--log-format=json"]},
    "agent": {
        "bootstrap": {"site": "cluster"},
        "metricsAddress": "127.0.0.1",
        "extraArgs": ["--address=198.18.0.7"],
        "extraEnv": [{"name": "TZ", "value": "UTC"}],
        "extraVolumes": [{"name": "extra", "emptyDir": {}}],
        "extraVolumeMounts": [{"name": "extra", "mountPath": "/extra"}],
        "nodeSelector": {"meshsec.io/agent": "true"},
    },
}


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
        {"agent": {"userspace": {"daemon": "sidecar"}}},
        {"agent": {"dataplane": "kernel"}},
        {"agent": {"userspace": {"updateStrategy": "RollingUpdate"}, "privileged": True}},
        {
            "store": {
                "type": "etcd",
                "etcd": {"endpoints": ["etcd-0:2379"], "tls": {"secretName": "etcd-client"}},
            }
        },
        EVERYTHING,
    ],
    ids=[
        "default",
        "etcd-ha",
        "minimal",
        "agent-only",
        "managed-bootstrap",
        "sidecar",
        "kernel",
        "dataplane-rolling",
        "etcd-tls",
        "everything",
    ],
)
@pytest.mark.parametrize("version", KUBE_VERSIONS)
def test_rendered_manifests_validate(values: dict[str, Any], version: str) -> None:
    rendered = render(values)
    kinds = set()
    for obj in objects(rendered):
        kinds.add(obj["kind"])
        if obj["apiVersion"].startswith(CUSTOM_GROUPS):
            continue  # a custom resource: checked against its CRD (kopf's) or in test_monitoring
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


def _daemon_args(c: dict[str, Any]) -> Any:
    from meshsec.agent.dataplane.userspace.daemon import parser as daemon_parser

    assert c["command"] == ["meshsec-dataplane"]
    return daemon_parser().parse_args(c["args"])


def _socket_mount(c: dict[str, Any]) -> str:
    return str({m["name"]: m["mountPath"] for m in c["volumeMounts"]}["dataplane-socket"])


def test_userspace_data_plane_is_a_daemonset_of_its_own_sharing_a_host_socket() -> None:
    """A pod replacement of the agent (every chart upgrade rolls it) must leave the userspace
    packet path running: the daemon is a DaemonSet of its own on the same nodes (host network,
    where the agent lends it UDP 4500), reached over a socket on a host directory both pods mount."""
    r = render(EVERYTHING)
    agent, dp = r["DaemonSet/mesh-meshsec-agent"], r["DaemonSet/mesh-meshsec-dataplane"]
    pod, dpod = agent["spec"]["template"]["spec"], dp["spec"]["template"]["spec"]
    assert [c["name"] for c in pod["containers"]] == ["agent"]
    a, (d,) = container(agent, "agent"), dpod["containers"]
    args, daemon = agent_parser().parse_args(a["command"][1:] + a["args"]), _daemon_args(d)
    assert args.userspace_daemon == "connect"  # the kubelet starts the daemon, not the agent
    assert args.dataplane_socket == daemon.socket
    assert daemon.tun_name == args.tun_name == "meshsec0"
    assert dpod["hostNetwork"] is True
    assert dp["spec"]["updateStrategy"] == {"type": "OnDelete"}  # a new template restarts nothing
    for p, c in ((pod, a), (dpod, d)):
        volumes = {v["name"]: v for v in p["volumes"]}
        host = {"path": "/run/meshsec/dataplane", "type": "DirectoryOrCreate"}
        assert volumes["dataplane-socket"] == {"name": "dataplane-socket", "hostPath": host}
        assert str(daemon.socket).startswith(_socket_mount(c) + "/")
    assert {m["name"]: m["mountPath"] for m in d["volumeMounts"]}["tun"] == "/dev/net/tun"
    assert set(d["securityContext"]["capabilities"]["add"]) == {"NET_ADMIN", "NET_RAW"}
    probe = d["readinessProbe"]["exec"]["command"]
    assert probe[0] == "meshsec-dataplane" and _daemon_args({"command": probe[:1], "args": probe[1:]}).status
    assert _daemon_args({"command": probe[:1], "args": probe[1:]}).socket == daemon.socket
    assert "livenessProbe" not in d  # a failed one would restart the daemon: an outage
    # Scheduled where the agents are, never on a node without one (and the other way round).
    for key in ("nodeSelector", "tolerations", "priorityClassName"):
        assert dpod[key] == pod[key], key
    # The two DaemonSets select disjoint pods (one must not adopt the other's).
    labels = dp["spec"]["template"]["metadata"]["labels"]
    assert not agent["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert dp["spec"]["selector"]["matchLabels"].items() <= labels.items()
    rolling = render({"agent": {"userspace": {"updateStrategy": "RollingUpdate", "socketDir": "/run/x"}}})
    assert rolling["DaemonSet/mesh-meshsec-dataplane"]["spec"]["updateStrategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxUnavailable": 1},
    }
    assert {"name": "dataplane-socket", "hostPath": {"path": "/run/x", "type": "DirectoryOrCreate"}} in (
        rolling["DaemonSet/mesh-meshsec-agent"]["spec"]["template"]["spec"]["volumes"]
    )


@pytest.mark.parametrize(
    "upgrade",
    [
        {"image": {"tag": "0.2.0"}},
        {
            "image": {"tag": "0.2.0"},
            "agent": {
                "logLevel": "debug",
                "extraArgs": ["--address=198.18.0.9"],
                "resources": {"requests": {"cpu": "1"}},
                "leaveOnStop": True,
            },
        },
    ],
    ids=["image-tag", "image-tag-and-agent-values"],
)
def test_an_agent_upgrade_leaves_the_data_plane_pod_template_unchanged(upgrade: dict[str, Any]) -> None:
    """The DaemonSet controller rolls a DaemonSet's pods when its pod template changes (for
    OnDelete, on their next replacement): an agent-only upgrade must change the agent's template
    and not the daemon's, whatever its update strategy."""
    import copy

    def merged(extra: dict[str, Any]) -> dict[str, Any]:
        out = copy.deepcopy(EVERYTHING)
        for key, value in extra.items():
            out[key] = {**out.get(key, {}), **value}
        return out

    before, after = render(EVERYTHING), render(merged(upgrade))
    assert (
        after["DaemonSet/mesh-meshsec-agent"]["spec"]["template"]
        != (before["DaemonSet/mesh-meshsec-agent"]["spec"]["template"])
    )
    assert container(after["DaemonSet/mesh-meshsec-agent"], "agent")["image"] == "meshsec/meshsec:0.2.0"
    dp = "DaemonSet/mesh-meshsec-dataplane"
    assert after[dp]["spec"] == before[dp]["spec"]
    assert container(after[dp], "dataplane")["image"] == "meshsec/meshsec:0.1.0"  # the appVersion
    # The daemon is upgraded on purpose, by its own tag.
    daemon_upgrade = render(
        merged({"agent": {**merged(upgrade).get("agent", {}), "userspace": {"image": {"tag": "0.2.0"}}}})
    )
    assert container(daemon_upgrade[dp], "dataplane")["image"] == "meshsec/meshsec:0.2.0"


def test_the_other_data_plane_shapes() -> None:
    """sidecar: the daemon in the agent's pod (survives the agent container's restart only);
    off, or the kernel backend: no daemon at all."""
    sidecar = render({"agent": {"userspace": {"daemon": "sidecar"}}})
    assert "DaemonSet/mesh-meshsec-dataplane" not in sidecar
    agent = sidecar["DaemonSet/mesh-meshsec-agent"]
    a, d = container(agent, "agent"), container(agent, "dataplane")
    args, daemon = agent_parser().parse_args(a["command"][1:] + a["args"]), _daemon_args(d)
    assert args.userspace_daemon == "connect"
    assert args.dataplane_socket == daemon.socket
    volumes = {v["name"]: v for v in agent["spec"]["template"]["spec"]["volumes"]}
    assert "emptyDir" in volumes["dataplane-socket"]  # lives as long as the pod, not a container
    assert str(daemon.socket).startswith(_socket_mount(a) + "/") and _socket_mount(a) == _socket_mount(d)

    for values in ({"agent": {"dataplane": "kernel"}}, {"agent": {"userspace": {"daemon": "off"}}}):
        r = render(values)
        assert "DaemonSet/mesh-meshsec-dataplane" not in r
        agent = r["DaemonSet/mesh-meshsec-agent"]
        pod = agent["spec"]["template"]["spec"]
        assert [c["name"] for c in pod["containers"]] == ["agent"]
        assert "dataplane-socket" not in {v["name"] for v in pod["volumes"]}
        c = container(agent, "agent")
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


ETCD_TLS = {"type": "etcd", "etcd": {"endpoints": ["etcd-0.etcd:2379"], "tls": {"secretName": "etcd-client"}}}


def test_etcd_tls_flags_name_the_files_of_the_mounted_secret() -> None:
    deploy = render({"store": ETCD_TLS, "controller": {"replicas": 2}})["Deployment/mesh-meshsec-controller"]
    ctl = container(deploy, "controller")
    args = controller_parser().parse_args(ctl["args"])
    assert args.store == "etcd://etcd-0.etcd:2379"
    mount = next(m for m in ctl["volumeMounts"] if m["name"] == "etcd-tls")
    assert mount["readOnly"] is True
    folder = Path(mount["mountPath"])
    assert (args.etcd_ca, args.etcd_cert, args.etcd_key) == (
        folder / "ca.crt",
        folder / "tls.crt",
        folder / "tls.key",
    )
    volumes = {v["name"]: v for v in deploy["spec"]["template"]["spec"]["volumes"]}
    secret = volumes["etcd-tls"]["secret"]
    assert secret["secretName"] == "etcd-client"
    assert secret["defaultMode"] == 0o400
    # Each flag's file is a key of the Secret, projected under the name the flag reads.
    assert {i["path"]: i["key"] for i in secret["items"]} == {
        "ca.crt": "ca.crt",
        "tls.crt": "tls.crt",
        "tls.key": "tls.key",
    }
    # The operator sidecar gets none of it: it never talks to etcd.
    assert all(m["name"] != "etcd-tls" for m in container(deploy, "operator")["volumeMounts"])


def test_etcd_tls_without_a_client_certificate_mounts_only_the_ca() -> None:
    values = {
        "store": {
            **ETCD_TLS,
            "etcd": {**ETCD_TLS["etcd"], "tls": {"secretName": "etcd-ca", "clientCertificate": False}},
        }
    }
    deploy = render(values)["Deployment/mesh-meshsec-controller"]
    args = controller_parser().parse_args(container(deploy, "controller")["args"])
    assert args.etcd_ca == Path("/etc/meshsec/etcd-tls/ca.crt")
    assert args.etcd_cert is None and args.etcd_key is None
    volumes = {v["name"]: v for v in deploy["spec"]["template"]["spec"]["volumes"]}
    assert volumes["etcd-tls"]["secret"]["items"] == [{"key": "ca.crt", "path": "ca.crt"}]


def test_plain_etcd_has_no_tls_flags_or_volume() -> None:
    deploy = render({"store": {"type": "etcd", "etcd": {"endpoints": ["etcd-0:2379"]}}})[
        "Deployment/mesh-meshsec-controller"
    ]
    ctl = container(deploy, "controller")
    assert not [a for a in ctl["args"] if a.startswith("--etcd-")]
    assert all(v["name"] != "etcd-tls" for v in deploy["spec"]["template"]["spec"]["volumes"])


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"controller": {"replicas": 2}}, "store.type=embedded runs exactly one controller replica"),
        ({"store": {"type": "etcd"}}, "store.type=etcd needs store.etcd.endpoints"),
        # values.schema.json catches these before any template runs.
        ({"store": {"type": "consul"}}, "/store/type': value must be one of 'embedded', 'etcd'"),
        ({"controler": {"replicas": 3}}, "additional properties 'controler' not allowed"),
        ({"agent": {"dataplane": "xfrm"}}, "/agent/dataplane': value must be one of"),
        # The 0.2 chart's switch: its values must say which shape they mean now.
        ({"agent": {"userspace": {"sidecar": True}}}, "additional properties 'sidecar' not allowed"),
        ({"agent": {"userspace": {"daemon": "pod"}}}, "/agent/userspace/daemon': value must be one of"),
        ({"agent": {"userspace": {"updateStrategy": "Recreate"}}}, "/agent/userspace/updateStrategy'"),
        ({"store": {"etcd": {"endpoints": ["http://etcd:2379"]}}}, "/store/etcd/endpoints/0"),
        ({"store": {"etcd": {"tls": {"secretName": "Etcd_Client"}}}}, "/store/etcd/tls/secretName"),
        ({"store": {"etcd": {"tls": {"ca": "ca.pem"}}}}, "additional properties 'ca' not allowed"),
        ({"store": {"etcd": {"tls": {"clientCertificate": "yes"}}}}, "/store/etcd/tls/clientCertificate"),
        # TLS flags on the embedded store would stop the controller at start (open_store refuses).
        (
            {"store": {"etcd": {"tls": {"secretName": "etcd-client"}}}},
            "store.etcd.tls.secretName needs store.type=etcd",
        ),
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
    """deploy/Dockerfile needs a registry (tests/e2e/test_image.py runs the offline build of the
    same image); check what the Dockerfile relies on."""
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
        container(r["DaemonSet/mesh-meshsec-dataplane"], "dataplane")["command"][0],
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


def _agent_args(rendered: dict[str, Any]) -> Any:
    c = container(rendered["DaemonSet/mesh-meshsec-agent"], "agent")
    return agent_parser().parse_args(c["command"][1:] + c["args"])


def _has_command(parser: Any, name: str) -> bool:
    return any(name in getattr(a, "choices", None) or () for a in parser._subparsers._group_actions)


def test_agent_metrics_listen_on_the_node_address_not_everywhere() -> None:
    r = render()
    c = container(r["DaemonSet/mesh-meshsec-agent"], "agent")
    env = {e["name"]: e for e in c["env"]}
    assert env["HOST_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.hostIP"
    assert _agent_args(r).metrics == "$(HOST_IP):9444"  # Kubernetes expands $(HOST_IP)
    assert c["ports"] == [{"name": "metrics", "containerPort": 9444, "protocol": "TCP"}]
    local = render({"agent": {"metricsAddress": "127.0.0.1"}})
    assert _agent_args(local).metrics == "127.0.0.1:9444"
    assert _agent_args(render({"agent": {"metricsAddress": "fd00::7"}})).metrics == "fd00::7:9444"
    assert _agent_args(render({"agent": {"metricsPort": 0}})).metrics is None
    with pytest.raises(Exception, match=re.escape("/agent/metricsAddress")):
        render({"agent": {"metricsAddress": "public"}})


def test_agent_probes_run_the_health_command() -> None:
    r = render()
    c = container(r["DaemonSet/mesh-meshsec-agent"], "agent")
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    live, ready = c["livenessProbe"], c["readinessProbe"]
    assert live["exec"]["command"][:3] == ["meshsec-agent", "health", "--live"]
    assert ready["exec"]["command"][:3] == ["meshsec-agent", "health", "--ready"]
    assert (live["periodSeconds"], live["failureThreshold"], ready["periodSeconds"]) == (20, 3, 10)
    parser = agent_parser()
    if not _has_command(parser, "health"):
        pytest.skip("meshsec-agent has no health command yet (h14-sites adds it)")
    for probe in (live, ready):
        args = parser.parse_args(probe["exec"]["command"][1:])
        assert str(args.state_dir) == mounts["state"] == str(_agent_args(r).state_dir)
    assert "livenessProbe" not in container(
        render({"agent": {"probes": {"enabled": False}}})["DaemonSet/mesh-meshsec-agent"], "agent"
    )


def test_extra_values_reach_each_container_and_pod() -> None:
    r = render(EVERYTHING)
    agent = r["DaemonSet/mesh-meshsec-agent"]
    pod = agent["spec"]["template"]["spec"]
    c = container(agent, "agent")
    assert _agent_args(r).address == ["198.18.0.7"]
    assert {"name": "TZ", "value": "UTC"} in c["env"]
    assert {"name": "extra", "emptyDir": {}} in pod["volumes"]
    assert {"name": "extra", "mountPath": "/extra"} in c["volumeMounts"]
    assert pod["nodeSelector"] == {"meshsec.io/agent": "true"}
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["priorityClassName"] == "system-node-critical"
    deploy = r["Deployment/mesh-meshsec-controller"]
    dpod = deploy["spec"]["template"]["spec"]
    assert dpod["priorityClassName"] == "system-cluster-critical"
    assert dpod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert controller_parser().parse_args(container(deploy, "controller")["args"]).log_format == "json"
    op = render(
        {
            "operator": {
                "extraArgs": ["--log-level=DEBUG"],
                "extraEnv": [{"name": "TZ", "value": "UTC"}],
                "extraVolumes": [{"name": "ca", "configMap": {"name": "ca"}}],
                "extraVolumeMounts": [{"name": "ca", "mountPath": "/etc/ca"}],
            }
        }
    )["Deployment/mesh-meshsec-controller"]
    oc = container(op, "operator")
    assert operator_main.build_parser().parse_args(oc["args"]).log_level == "DEBUG"  # the last one wins
    assert {"name": "TZ", "value": "UTC"} in oc["env"]
    assert {"name": "ca", "configMap": {"name": "ca"}} in op["spec"]["template"]["spec"]["volumes"]
    assert {"name": "ca", "mountPath": "/etc/ca"} in oc["volumeMounts"]
    with pytest.raises(Exception, match=re.escape("/agent/extraVolumeMounts/0")):
        render({"agent": {"extraVolumeMounts": [{"name": "x"}]}})


def test_monitoring_objects_select_what_serves_metrics() -> None:
    r = render(
        {
            "metrics": {
                "serviceMonitor": {"enabled": True, "labels": {"release": "prom"}, "interval": "15s"},
                "podMonitor": {"enabled": True},
                "prometheusRule": {"enabled": True},
            }
        }
    )
    sm = r["ServiceMonitor/mesh-meshsec-controller"]
    svc = r["Service/mesh-meshsec"]
    assert sm["metadata"]["labels"]["release"] == "prom"
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert sm["spec"]["endpoints"][0]["port"] in {p["name"] for p in svc["spec"]["ports"]}
    assert sm["spec"]["endpoints"][0]["interval"] == "15s"
    pm = r["PodMonitor/mesh-meshsec-agent"]
    agent = r["DaemonSet/mesh-meshsec-agent"]
    labels = agent["spec"]["template"]["metadata"]["labels"]
    assert pm["spec"]["selector"]["matchLabels"].items() <= labels.items()
    ports = {p["name"] for p in container(agent, "agent")["ports"]}
    assert pm["spec"]["podMetricsEndpoints"][0]["port"] in ports
    rules = r["PrometheusRule/mesh-meshsec"]["spec"]
    alerts = yaml.safe_load((ROOT / "deploy/monitoring/meshsec-alerts.yaml").read_text())
    assert rules["groups"] == alerts["groups"]  # the alert texts' {{ $labels }} reach Prometheus as written
    copy = CHART / "files/meshsec-alerts.yaml"
    assert copy.read_text() == (ROOT / "deploy/monitoring/meshsec-alerts.yaml").read_text(), (
        f"cp deploy/monitoring/meshsec-alerts.yaml {copy.relative_to(ROOT)}"
    )
    assert not [k for k in render() if k.startswith(("ServiceMonitor/", "PodMonitor/", "PrometheusRule/"))]
    with pytest.raises(Exception, match=re.escape("needs agent.metricsAddress=hostIP")):
        render({"metrics": {"podMonitor": {"enabled": True}}, "agent": {"metricsAddress": "127.0.0.1"}})


def test_cluster_mode_flags_and_rbac() -> None:
    plain = render()["ClusterRole/mesh-meshsec-operator"]
    assert not [rule for rule in plain["rules"] if "nodes" in rule["resources"] and rule["apiGroups"] == [""]]
    r = render(EVERYTHING)
    role = r["ClusterRole/mesh-meshsec-operator"]
    core = next(rule for rule in role["rules"] if rule["apiGroups"] == [""] and "nodes" in rule["resources"])
    assert set(core["verbs"]) == {"get", "list", "watch"}
    args = container(r["Deployment/mesh-meshsec-controller"], "operator")["args"]
    assert "--cluster-site=cluster" in args and "--service-cidr=198.19.240.0/20" in args
    assert "--gateway-label=meshsec.io/gateway=true" in args and "--cluster-site-label=kind=k8s" in args
    parser = operator_main.build_parser()
    if not any("--cluster-site" in a.option_strings for a in parser._actions):
        pytest.skip("the operator has no --cluster-site yet (h14-sites adds it)")
    parsed = vars(parser.parse_args(args))
    assert parsed["cluster_site"] == "cluster"


def test_crds_are_templates_that_helm_upgrades_and_keeps() -> None:
    with helm.Chart.load(str(CHART)) as chart:
        files = chart.render({}, name="mesh", namespace=NAMESPACE, is_install=False)
        in_crds_dir = [yaml.safe_load(i.get("data") or i.get("content") or "") for i in chart.crds]
    templated = [
        doc
        for path, text in files.items()
        if "/templates/crds/" in path
        for doc in yaml.safe_load_all(text)
        if doc
    ]
    assert sorted(d["metadata"]["name"] for d in templated) == sorted(
        f"{crds.NAMES[k].plural}.{crds.GROUP}" for k in Kind
    )
    assert all(d["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep" for d in templated)
    # Only kopf's static peering CRD stays in crds/ (its ClusterKopfPeering must be known before
    # the templates are checked against the API server).
    assert [d["metadata"]["name"] for d in in_crds_dir] == ["clusterkopfpeerings.kopf.dev"]
    assert not [k for k in render({"crds": {"install": False}}) if k.endswith(f".{crds.GROUP}")]
    assert crds.stale(CHART / "templates/crds") == []


OLD_CRDS = Path(__file__).with_name("crds-0.1.0")


def _property_types(
    schema: dict[str, Any], path: str = ""
) -> Iterator[tuple[str, tuple[str, frozenset[str]]]]:
    """(path, (type, required fields)) of every schema node."""
    yield path, (schema.get("type", ""), frozenset(schema.get("required", ())))
    for name, sub in (schema.get("properties") or {}).items():
        yield from _property_types(sub, f"{path}.{name}")
    if isinstance(schema.get("items"), dict):
        yield from _property_types(schema["items"], f"{path}[]")


@pytest.mark.parametrize("old_file", sorted(OLD_CRDS.glob("*.yaml")), ids=lambda p: p.stem)
def test_upgrade_from_0_1_keeps_every_stored_field(old_file: Path) -> None:
    """The 0.1.0 chart's CRDs (its crds/ files) against this chart's: same group, version, scope
    and storage version, and every field an object stored under the old schema has is still there
    with the same type and no field is newly required, so `helm upgrade` (which now applies the
    CRDs) strands nothing. The Node
    CRD became MeshNode: its objects move by the step docs/kubernetes.md gives."""
    old = yaml.safe_load(old_file.read_text())
    kind = crds.kind_of(old["spec"]["names"]["kind"])
    new = render()[f"CustomResourceDefinition/{crds.NAMES[kind].plural}.{crds.GROUP}"]
    for key in ("group", "scope"):
        assert new["spec"][key] == old["spec"][key]
    (old_version,) = old["spec"]["versions"]
    (new_version,) = new["spec"]["versions"]
    assert (new_version["name"], new_version["storage"]) == (old_version["name"], True)
    old_types = dict(_property_types(old_version["schema"]["openAPIV3Schema"]))
    new_types = dict(_property_types(new_version["schema"]["openAPIV3Schema"]))
    changed = {
        path: (kind_, new_types.get(path))
        for path, kind_ in old_types.items()
        if path not in new_types or new_types[path][0] != kind_[0] or not new_types[path][1] <= kind_[1]
    }
    assert changed == {}  # no field gone, no type changed, nothing newly required
    docs = (ROOT / "docs/kubernetes.md").read_text()
    if kind is Kind.NODE:
        assert old["metadata"]["name"] == crds.LEGACY_NODE_CRD
        assert f"kubectl get {crds.LEGACY_NODE_CRD} -o yaml" in docs
    else:
        # The documented hand-over of each CRD to the release before the first `helm upgrade`.
        handed_over = re.search(r"for crd in ([^;]*); do", docs)
        assert handed_over is not None
        assert old["metadata"]["name"] in handed_over.group(1).split()


def test_operator_reads_gateway_secrets_in_its_own_namespace() -> None:
    r = render()
    role = r["Role/mesh-meshsec-gateway-secrets"]
    assert role["metadata"]["namespace"] == NAMESPACE
    # get: the value; list/watch: the operator's watch of each referenced Secret by name.
    assert role["rules"] == [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list", "watch"]}]
    deploy = r["Deployment/mesh-meshsec-controller"]
    binding = r["RoleBinding/mesh-meshsec-gateway-secrets"]
    assert binding["subjects"][0]["name"] == deploy["spec"]["template"]["spec"]["serviceAccountName"]
    op = container(deploy, "operator")
    # The operator's --secret-namespace defaults to $POD_NAMESPACE: this release's namespace.
    env = {e["name"]: e for e in op["env"]}
    assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    assert not any(a.startswith("--secret-namespace") for a in op["args"])
    assert "Role/mesh-meshsec-gateway-secrets" not in render({"operator": {"gatewaySecrets": False}})
