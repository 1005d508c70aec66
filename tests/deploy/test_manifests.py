"""The Kubernetes layouts: every overlay rendered by ``kubectl kustomize``, valid against the
Kubernetes schemas, and in agreement with flagpost itself (no drift)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

import rules
from service.server import SHUTDOWN_TIMEOUT
from service.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
OVERLAYS = sorted(path.parent for path in (ROOT / "k8s" / "overlays").glob("*/kustomization.yaml"))
OPENAPI = json.loads((ROOT / "service" / "openapi.json").read_text())
SETTINGS = {variable: name for name, variable, *_ in Settings.describe()}
WORKLOADS = {"Deployment", "StatefulSet"}
PROBES = ("startupProbe", "livenessProbe", "readinessProbe")
#: A stand-in for each secret (values from a Secret are not in the manifests), valid for its
#: setting: the check is that the manifests' own values are.
SECRET_STAND_INS = {
    "FLAGPOST_API_KEYS": "a-key-of-sixteen-or-more",
    "FLAGPOST_WEBHOOK_SECRET": "a-webhook-secret",
    "FLAGPOST_VISITORS": "redis://redis.example:6379/0",
    "FLAGPOST_REDIS_URL": "redis://redis.example:6379/0",
}


def render(overlay: Path) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    assert kubectl is not None, "kubectl is not installed (apt-get install kubernetes-client)"
    result = subprocess.run(
        [kubectl, "kustomize", str(overlay)], capture_output=True, text=True, check=True
    )
    return [document for document in yaml.safe_load_all(result.stdout) if document]


@pytest.fixture(scope="module", params=OVERLAYS, ids=lambda path: path.name)
def rendered(request: pytest.FixtureRequest) -> list[dict[str, Any]]:
    """The resources of one overlay, as ``kubectl kustomize`` renders them."""
    overlay: Path = request.param
    return render(overlay)


def containers(resources: list[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """(pod spec, container) of every container of every workload, sidecars included."""
    for resource in resources:
        if resource["kind"] in WORKLOADS:
            pod = resource["spec"]["template"]["spec"]
            for container in pod.get("initContainers", []) + pod["containers"]:
                yield pod, container


def flagposts(resources: list[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    found = [
        (pod, container)
        for pod, container in containers(resources)
        if container["image"].split(":")[0] == "flagpost"
    ]
    assert found, "no flagpost container"
    return found


def image_environment() -> dict[str, str]:
    """The ENV the Dockerfile's final stage sets."""
    final = (ROOT / "Dockerfile").read_text().rsplit("\nFROM ", 1)[1]
    block = re.search(r"^ENV (.*?)(?<!\\)\n", final, re.M | re.S)
    assert block is not None
    pairs = re.findall(r"(\w+)=(\S+)", block.group(1))
    return dict(pairs)


def settings_of(container: dict[str, Any]) -> Settings:
    environ = {k: v for k, v in image_environment().items() if k.startswith("FLAGPOST_")}
    for variable in container.get("env", []):
        value = variable.get("value", SECRET_STAND_INS.get(variable["name"]))
        assert value is not None, f"{variable['name']}: no value and no stand-in"
        environ[variable["name"]] = value
    return load_settings(environ)


def test_every_overlay_renders_and_is_valid_kubernetes(rendered: list[dict[str, Any]]) -> None:
    """kubernetes-validate --strict accepts every resource (no unknown field anywhere)."""
    validate = shutil.which("kubernetes-validate")
    assert validate is not None, "pip install kubernetes-validate"
    result = subprocess.run(
        [validate, "--strict", "--quiet", "-"],
        input=yaml.safe_dump_all(rendered),
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert ("", 0) == (result.stdout + result.stderr, result.returncode)


def test_flagpost_containers_set_only_real_settings_with_valid_values(
    rendered: list[dict[str, Any]],
) -> None:
    """Every variable a flagpost container (or the image) sets is a FLAGPOST_* setting, and
    together they are settings flagpost starts with."""
    for _, container in flagposts(rendered):
        names = [variable["name"] for variable in container.get("env", [])]
        names += [name for name in image_environment() if name.startswith("FLAGPOST_")]
        assert [] == [name for name in names if name not in SETTINGS]
        settings_of(container)  # raises SettingsError on a bad value or combination


def test_probes_ask_real_routes_on_the_port_flagpost_listens_on(
    rendered: list[dict[str, Any]],
) -> None:
    """Each flagpost probe asks a GET route of the API on the port flagpost listens on."""
    for _, container in flagposts(rendered):
        settings = settings_of(container)
        ports = {port["name"]: port["containerPort"] for port in container.get("ports", [])}
        for probe in PROBES:
            spec = container[probe]
            if "httpGet" in spec:
                path, port = spec["httpGet"]["path"], ports[spec["httpGet"]["port"]]
                assert "0.0.0.0" == settings.host
            else:
                found = re.search(
                    r"http://127\.0\.0\.1:(\d+)(/[\w/]*)", " ".join(spec["exec"]["command"])
                )
                assert found is not None, spec
                port, path = int(found.group(1)), found.group(2)
                assert "127.0.0.1" == settings.host
            assert settings.port == port
            assert "get" in OPENAPI["paths"][path]


def test_the_grace_period_covers_the_pause_the_requests_and_the_drain(
    rendered: list[dict[str, Any]],
) -> None:
    """terminationGracePeriodSeconds outlasts the preStop pause of the pod's containers,
    flagpost's grace for open requests and its events' drain."""
    for pod, container in flagposts(rendered):
        pauses = [
            int(other["lifecycle"]["preStop"]["exec"]["command"][1])
            for other in pod["containers"] + pod.get("initContainers", [])
            if "lifecycle" in other
        ]
        needed = max(pauses, default=0) + SHUTDOWN_TIMEOUT + settings_of(container).drain_timeout
        assert pod["terminationGracePeriodSeconds"] > needed


def test_flagpost_writes_only_to_its_volume(rendered: list[dict[str, Any]]) -> None:
    """With a read-only root filesystem, the cache, the spool and the event files are all
    under a volume mounted writable, and the rules file under the rules' mount."""
    for _, container in flagposts(rendered):
        settings = settings_of(container)
        mounts = {m["mountPath"]: m.get("readOnly", False) for m in container["volumeMounts"]}
        written = [settings.cache_dir, settings.spool_dir]
        written += [
            sink.removeprefix("file:") for sink in settings.events if sink.startswith("file:")
        ]
        for path in written:
            assert any(
                Path(path).is_relative_to(mount) and not read_only
                for mount, read_only in mounts.items()
            ), path
        assert any(Path(settings.rules).is_relative_to(mount) for mount in mounts)


def test_every_container_is_locked_down_probed_and_sized(rendered: list[dict[str, Any]]) -> None:
    """Every container: non-root, read-only root filesystem, no capabilities, no privilege
    escalation, the runtime's seccomp profile, all three probes, requests and limits."""
    for pod, container in containers(rendered):
        security = container["securityContext"]
        assert security["runAsNonRoot"] is True
        assert security["readOnlyRootFilesystem"] is True
        assert security["allowPrivilegeEscalation"] is False
        assert ["ALL"] == security["capabilities"]["drop"]
        assert "RuntimeDefault" == security["seccompProfile"]["type"]
        assert "RuntimeDefault" == pod["securityContext"]["seccompProfile"]["type"]
        assert all(probe in container for probe in PROBES), container["name"]
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= container["resources"][kind].keys()


def test_rollouts_and_disruptions_keep_flagpost_answering(rendered: list[dict[str, Any]]) -> None:
    """Deployments add a pod before they take one; a StatefulSet is covered by a disruption
    budget and an autoscaler that keeps two replicas at least."""
    kinds = {resource["kind"]: resource for resource in rendered}
    for resource in rendered:
        if resource["kind"] == "Deployment":
            assert 0 == resource["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"]
    if "StatefulSet" in kinds:
        assert kinds["PodDisruptionBudget"]["spec"]["maxUnavailable"] == 1
        assert kinds["HorizontalPodAutoscaler"]["spec"]["minReplicas"] >= 2


def test_the_rules_in_the_config_map_are_valid(rendered: list[dict[str, Any]]) -> None:
    """The rules the layouts ship load as a ruleset."""
    config_map = next(r for r in rendered if r["kind"] == "ConfigMap")
    assert rules.load(config_map["data"]["rules.json"].encode()).flag_keys
