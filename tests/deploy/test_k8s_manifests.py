"""Both kustomize layouts render offline and every object validates strictly against Kubernetes'
own schemas (kubernetes-validate --strict, the oldest version with GA native sidecars and the
newest the package ships); the ServiceMonitor, a CRD without a built-in schema, is checked against
the subset of the Prometheus Operator's schema it uses. Then the objects are checked against each
other and against the code: references resolve, ports line up, settings are real settings.
"""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from tests.deploy.conftest import K8S, LAYOUTS, Rendered

# 1.33: native sidecars (initContainers with restartPolicy: Always) are GA; 1.37: the newest schemas.
KUBERNETES_VERSIONS = ["1.33.0", "1.37.0"]
# Duration as the Prometheus Operator's CRD defines it (monitoring.coreos.com/v1 Duration).
DURATION = r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"
SERVICE_MONITOR_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": {
            "type": "object", "required": ["name"], "additionalProperties": False,
            "properties": {"name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
                           "namespace": {"type": "string"},
                           "labels": {"type": "object", "additionalProperties": {"type": "string"}}},
        },
        "spec": {
            "type": "object", "required": ["selector", "endpoints"], "additionalProperties": False,
            "properties": {
                "selector": {"type": "object", "additionalProperties": False, "minProperties": 1,
                             "properties": {"matchLabels": {"type": "object", "additionalProperties": {"type": "string"}}}},
                "namespaceSelector": {"type": "object"},
                "endpoints": {"type": "array", "minItems": 1, "items": {
                    "type": "object", "required": ["port"], "additionalProperties": False,
                    "properties": {"port": {"type": "string"}, "path": {"type": "string", "pattern": "^/"},
                                   "scheme": {"enum": ["http", "https", "HTTP", "HTTPS"]},
                                   "interval": {"type": "string", "pattern": DURATION},
                                   "scrapeTimeout": {"type": "string", "pattern": DURATION}}}},
            },
        },
    },
}


def kubernetes_validate(path: Path, version: str) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).parent / "kubernetes-validate"
    command = [str(exe)] if exe.exists() else [sys.executable, "-m", "kubernetes_validate"]
    return subprocess.run([*command, "--strict", "--quiet", "-k", version, str(path)],
                          check=False, capture_output=True, text=True, timeout=120)


def _pod_specs(layout: Rendered) -> dict[str, dict]:
    return {d["metadata"]["name"]: d["spec"]["template"]["spec"] for d in layout.of_kind("Deployment")}


def _containers(pod: dict) -> list[dict]:
    return [*pod.get("initContainers", []), *pod["containers"]]


def _selected(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


# ---------------------------------------------------------------- schema validation


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_object_validates_strictly(layout: Rendered, version: str, tmp_path: Path) -> None:
    builtin = [o for o in layout.objects if o["kind"] != "ServiceMonitor"]
    path = tmp_path / f"{layout.name}.yaml"
    path.write_text(yaml.safe_dump_all(builtin))
    done = kubernetes_validate(path, version)
    assert done.returncode == 0 and not done.stdout.strip(), done.stdout + done.stderr
    assert {o["kind"] for o in layout.objects} - {o["kind"] for o in builtin} == {"ServiceMonitor"}, \
        "every other kind must have a built-in schema (no silent WARN)"


def test_strict_validation_rejects_an_unknown_field(rendered: dict[str, Rendered], tmp_path: Path) -> None:
    """The validation above can fail: a misspelt field in the Deployment is caught."""
    deployment = copy.deepcopy(rendered["base"].get("Deployment", "pseudoserve"))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {"grpc": {"port": 8001}}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(deployment))
    done = kubernetes_validate(path, KUBERNETES_VERSIONS[-1])
    assert done.returncode != 0 and "readinesProbe" in done.stdout


def test_service_monitor_matches_the_operator_schema(layout: Rendered) -> None:
    monitors = layout.of_kind("ServiceMonitor")
    assert len(monitors) == 1
    jsonschema.validate(monitors[0], SERVICE_MONITOR_SCHEMA)
    broken = copy.deepcopy(monitors[0])
    broken["spec"]["endpoints"][0]["interval"] = "15 seconds"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, SERVICE_MONITOR_SCHEMA)


def test_every_manifest_file_is_rendered() -> None:
    """No YAML file in k8s/ is left out of its kustomization (it would never be validated)."""
    for folder in LAYOUTS.values():
        listed = yaml.safe_load((folder / "kustomization.yaml").read_text())
        named = set(listed.get("resources", [])) | {p["path"] for p in listed.get("patches", []) if "path" in p}
        for path in folder.glob("*.yaml"):
            if path.name != "kustomization.yaml":
                assert path.name in named, f"{path.relative_to(K8S)} is not listed in its kustomization.yaml"


# ---------------------------------------------------------------- references and ports


def test_references_resolve(layout: Rendered) -> None:
    names = {(o["kind"], o["metadata"]["name"]) for o in layout.objects}
    for deployment, pod in _pod_specs(layout).items():
        for container in _containers(pod):
            for source in container.get("envFrom", []):
                assert ("ConfigMap", source["configMapRef"]["name"]) in names, (deployment, source)
            for env in container.get("env", []):
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    secret = layout.get("Secret", ref["name"])
                    assert ref["key"] in {**secret.get("data", {}), **secret.get("stringData", {})}
            mounts = {m["name"] for m in container.get("volumeMounts", [])}
            assert mounts <= {v["name"] for v in pod["volumes"]}, (deployment, container["name"])
        for volume in pod["volumes"]:
            claim = volume.get("persistentVolumeClaim")
            if claim:
                assert ("PersistentVolumeClaim", claim["claimName"]) in names, (deployment, claim)
    for hpa in layout.of_kind("HorizontalPodAutoscaler"):
        target = hpa["spec"]["scaleTargetRef"]
        assert (target["kind"], target["name"]) in names
        pod = _pod_specs(layout)[target["name"]]
        for metric in hpa["spec"]["metrics"]:
            if metric["type"] == "ContainerResource":
                assert metric["containerResource"]["container"] in {c["name"] for c in pod["containers"]}


def test_services_and_probes_hit_real_container_ports(layout: Rendered) -> None:
    pods = {name: (d["spec"]["template"]["metadata"]["labels"], d["spec"]["template"]["spec"])
            for name, d in ((d["metadata"]["name"], d) for d in layout.of_kind("Deployment"))}
    for service in layout.of_kind("Service"):
        matched = [spec for labels, spec in pods.values() if _selected(service["spec"]["selector"], labels)]
        assert matched, f"{layout.name}: Service {service['metadata']['name']} selects no pod"
        for spec in matched:
            ports = {p["name"]: p["containerPort"] for c in _containers(spec) for p in c.get("ports", [])}
            for port in service["spec"]["ports"]:
                assert port["targetPort"] in ports, f"{service['metadata']['name']}: no container port {port['targetPort']}"
                assert ports[port["targetPort"]] == port["port"], "keep Service and container port numbers equal"
    for name, (_, spec) in pods.items():
        for container in _containers(spec):
            own = {p["containerPort"] for p in container.get("ports", [])}
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                if probe in container:
                    assert "grpc" in container[probe], f"{name}/{container['name']} {probe}: use the gRPC health check"
                    assert container[probe]["grpc"]["port"] in own, f"{name}/{container['name']} {probe} port"


def test_service_monitor_scrapes_the_service_and_the_trainer(layout: Rendered) -> None:
    monitor = layout.of_kind("ServiceMonitor")[0]
    services = [s for s in layout.of_kind("Service")
                if _selected(monitor["spec"]["selector"]["matchLabels"], s["metadata"].get("labels", {}))]
    exposed = {p["name"]: p["port"] for s in services for p in s["spec"]["ports"]}
    for endpoint in monitor["spec"]["endpoints"]:
        assert endpoint["port"] in exposed, f"{layout.name}: no selected Service has port {endpoint['port']}"
    scraped = {exposed[e["port"]] for e in monitor["spec"]["endpoints"]}
    assert scraped == {8002, 8003}, "service metrics (8002) and trainer metrics (8003)"


def test_settings_are_real_settings_and_ports_agree(layout: Rendered) -> None:
    """Every PSEUDOSERVE_* variable names a settings field and parses; the ports match the pods."""
    from service.settings import ServerSettings
    from trainer.settings import TrainerSettings

    for cls, prefix, config in ((ServerSettings, "PSEUDOSERVE_", "pseudoserve-service-config"),
                                (TrainerSettings, "PSEUDOSERVE_TRAINER_", "pseudoserve-trainer-config")):
        fields = {prefix + f.upper() for f in cls.model_fields}
        data = layout.config_map(config)["data"]
        unknown = set(data) - fields
        assert not unknown, f"{layout.name} {config}: not settings of {cls.__name__}: {sorted(unknown)}"
        settings = cls(**{k.removeprefix(prefix).lower(): v for k, v in data.items()})
        assert settings.host == "0.0.0.0", "probes and Prometheus connect to the pod IP"
        for pod in _pod_specs(layout).values():
            for container in _containers(pod):
                refs = [s["configMapRef"]["name"] for s in container.get("envFrom", [])]
                if layout.config_map(config)["metadata"]["name"] not in refs:
                    continue
                for env in container.get("env", []):
                    if env["name"].startswith("PSEUDOSERVE_"):
                        assert env["name"] in fields, f"{container['name']}: {env['name']} is no {cls.__name__} field"
                ports = {p["name"]: p["containerPort"] for p in container["ports"]}
                grpc_name, metrics_name = ("grpc", "metrics") if cls is ServerSettings else ("trainer-grpc", "trainer-metrics")
                assert ports == {grpc_name: settings.grpc_port, metrics_name: settings.metrics_port}


def test_container_commands_are_real_subcommands(layout: Rendered) -> None:
    from pseudoserve.cli import SUBCOMMANDS

    for pod in _pod_specs(layout).values():
        for container in _containers(pod):
            assert container["args"][0] in SUBCOMMANDS
            assert "command" not in container, "the image's ENTRYPOINT is `pseudoserve`"


def test_pods_are_locked_down(layout: Rendered) -> None:
    for name, pod in _pod_specs(layout).items():
        assert pod["enableServiceLinks"] is False, f"{name}: service links inject PSEUDOSERVE_* variables"
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == 10001, "the image's USER"
        for container in _containers(pod):
            ctx = container["securityContext"]
            assert ctx["allowPrivilegeEscalation"] is False and ctx["readOnlyRootFilesystem"] is True
            assert ctx["capabilities"]["drop"] == ["ALL"]
            assert {"cpu", "memory"} <= set(container["resources"]["requests"]) and \
                {"cpu", "memory"} <= set(container["resources"]["limits"]), f"{name}/{container['name']}"
            assert "/tmp" in {m["mountPath"] for m in container["volumeMounts"]}, "read-only root needs a /tmp"


def test_grace_period_covers_the_drain(layout: Rendered) -> None:
    from service.settings import ServerSettings

    drain = float(layout.config_map("pseudoserve-service-config")["data"].get(
        "PSEUDOSERVE_SHUTDOWN_GRACE_SECONDS", ServerSettings.model_fields["shutdown_grace_seconds"].default))
    pod = _pod_specs(layout)["pseudoserve"]
    service = next(c for c in pod["containers"] if c["name"] == "service")
    pre_stop = service["lifecycle"]["preStop"]["sleep"]["seconds"]
    sidecar_stop = 10 if pod.get("initContainers") else 0  # the trainer stops after the service
    assert pod["terminationGracePeriodSeconds"] >= pre_stop + drain + sidecar_stop + 5
    assert pod["terminationGracePeriodSeconds"] <= pre_stop + drain + sidecar_stop + 30, "not absurdly long"


# ---------------------------------------------------------------- the two layouts


def test_readiness_waits_for_the_trained_model(layout: Rendered) -> None:
    model = layout.config_map("pseudoserve-trainer-config")["data"]["PSEUDOSERVE_TRAINER_MODEL_NAME"]
    pod = _pod_specs(layout)["pseudoserve"]
    service = next(c for c in pod["containers"] if c["name"] == "service")
    assert service["readinessProbe"]["grpc"].get("service") == model
    assert not service["livenessProbe"]["grpc"].get("service") and not service["startupProbe"]["grpc"].get("service")


def test_sidecar_layout(rendered: dict[str, Rendered]) -> None:
    base = rendered["base"]
    deployment = base.get("Deployment", "pseudoserve")
    assert deployment["spec"]["strategy"]["type"] == "Recreate", "never two trainers on one store"
    pod = deployment["spec"]["template"]["spec"]
    (trainer,) = pod["initContainers"]
    (service,) = pod["containers"]
    assert trainer["restartPolicy"] == "Always", "a native sidecar"
    assert trainer["args"] == ["trainer"] and service["args"] == ["serve"]
    assert "readinessProbe" not in trainer and "startupProbe" not in trainer, \
        "the trainer's state must not gate the service's readiness or start"
    assert "livenessProbe" in trainer
    mounts = {c["name"]: {m["mountPath"]: m for m in c["volumeMounts"]} for c in (trainer, service)}
    assert mounts["trainer"]["/models"]["name"] == mounts["service"]["/models"]["name"]
    assert mounts["trainer"]["/models"].get("subPath") == mounts["service"]["/models"].get("subPath")
    assert mounts["service"]["/models"]["readOnly"] is True
    assert "/data" not in mounts["service"], "only the trainer touches the store"
    config = base.config_map("pseudoserve-service-config")["data"]
    trainer_config = base.config_map("pseudoserve-trainer-config")["data"]
    assert config["PSEUDOSERVE_TRAINER_ADDRESS"] == f"127.0.0.1:{trainer_config['PSEUDOSERVE_TRAINER_GRPC_PORT']}"
    assert trainer_config["PSEUDOSERVE_TRAINER_SERVICE_ADDRESS"] == f"127.0.0.1:{config['PSEUDOSERVE_GRPC_PORT']}"
    hpa = base.get("HorizontalPodAutoscaler", "pseudoserve")["spec"]
    assert hpa["minReplicas"] == hpa["maxReplicas"] == 1, "one pod: the sidecar is the store's single writer"
    assert base.get("PersistentVolumeClaim", "pseudoserve-data")["spec"]["accessModes"] == ["ReadWriteOnce"]


def test_scale_layout(rendered: dict[str, Rendered]) -> None:
    scale = rendered["scale"]
    service_pod = scale.get("Deployment", "pseudoserve")
    assert not service_pod["spec"]["template"]["spec"].get("initContainers"), "replicas carry no trainer"
    assert service_pod["spec"]["strategy"]["type"] == "RollingUpdate"
    assert "replicas" not in service_pod["spec"], "the HPA owns the replica count"
    hpa = scale.get("HorizontalPodAutoscaler", "pseudoserve")["spec"]
    assert 2 <= hpa["minReplicas"] < hpa["maxReplicas"]
    trainer = scale.get("Deployment", "pseudoserve-trainer")
    assert trainer["spec"]["replicas"] == 1 and trainer["spec"]["strategy"]["type"] == "Recreate"
    trainer_service = scale.get("Service", "pseudoserve-trainer")
    grpc_port = next(p["port"] for p in trainer_service["spec"]["ports"] if p["name"] == "trainer-grpc")
    config = scale.config_map("pseudoserve-service-config")["data"]
    assert config["PSEUDOSERVE_TRAINER_ADDRESS"] == f"pseudoserve-trainer:{grpc_port}"
    assert float(config["PSEUDOSERVE_REPOSITORY_POLL_SECONDS"]) > 0, "replicas find new versions by polling"
    assert scale.get("PersistentVolumeClaim", "pseudoserve-repository")["spec"]["accessModes"] == ["ReadWriteMany"]

    def claim_at(pod: dict, container: str, path: str) -> tuple[str, bool]:
        c = next(c for c in _containers(pod) if c["name"] == container)
        mount = next(m for m in c["volumeMounts"] if m["mountPath"] == path)
        volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
        return volume["persistentVolumeClaim"]["claimName"], mount.get("readOnly", False)

    assert claim_at(service_pod["spec"]["template"]["spec"], "service", "/models") == ("pseudoserve-repository", True)
    assert claim_at(trainer["spec"]["template"]["spec"], "trainer", "/models") == ("pseudoserve-repository", False)
    assert claim_at(trainer["spec"]["template"]["spec"], "trainer", "/data")[0] == "pseudoserve-data"
    trainer_config = scale.config_map("pseudoserve-trainer-config")["data"]
    assert trainer_config["PSEUDOSERVE_TRAINER_SERVICE_ADDRESS"].startswith("pseudoserve:")


def test_dashboard_config_map_is_the_json_file(layout: Rendered) -> None:
    config = layout.get("ConfigMap", "pseudoserve-dashboard")
    assert config["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert config["data"] == {"pseudoserve.json": (K8S / "base" / "dashboards" / "pseudoserve.json").read_text()}
