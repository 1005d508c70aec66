"""The image: the unchanged ``Dockerfile`` built and run by a real Docker engine."""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.docker_engine import docker, import_base, running_docker
from tests.service.process import free_port

ROOT = Path(__file__).resolve().parents[2]
IMAGE = "flagpost:test"
UID = 10001
FR_PHONE = {"geo": {"country": "FR"}, "device": "phone"}


@pytest.fixture(scope="module")
def engine() -> Iterator[dict[str, str]]:
    """A Docker engine on which the Dockerfile has been built as ``flagpost:test``."""
    with running_docker() as env:
        import_base(env, Path.home() / ".cache" / "flagpost-tests")
        docker(env, "build", "--quiet", "--tag", IMAGE, str(ROOT), timeout=900)
        yield env


def wait_ready(base: str, env: dict[str, str], name: str) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(f"{base}/readyz", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError):
            pass
        logs = docker(env, "logs", name, check=False)
        assert time.monotonic() < deadline, f"not ready: {logs.stdout}{logs.stderr}"
        time.sleep(0.2)


def test_the_image_answers_read_only_as_its_own_user_and_drains_on_sigterm(
    engine: dict[str, str], tmp_path: Path
) -> None:
    """With a read-only root filesystem and only its volume writable, the container answers
    a decision on a published port as uid 10001, turns healthy, and on SIGTERM (docker stop)
    exits 0 with the decision's exposure written to its event files."""
    data = tmp_path / "data"
    data.mkdir()
    os.chown(data, UID, UID)
    port = free_port()
    name = f"flagpost-test-{port}"
    docker(
        engine, "run", "--detach", "--name", name, "--read-only",
        "--publish", f"127.0.0.1:{port}:8080",
        "--volume", f"{data}:/var/lib/flagpost",
        "--health-interval", "1s", "--health-start-period", "1s",
        IMAGE,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base, engine, name)
        request = urllib.request.Request(
            f"{base}/v1/flags/new_checkout/decision",
            data=json.dumps({"visitor_code": "in-a-box", "context": FR_PHONE}).encode(),
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            assert "on" == json.loads(response.read())["variation"]
        user = docker(engine, "exec", name, "id", "-u").stdout.strip()
        deadline = time.monotonic() + 30
        while (health := inspect(engine, name)["Health"]["Status"]) != "healthy":
            assert time.monotonic() < deadline, health
            time.sleep(0.5)
        docker(engine, "stop", "--time", "30", name)
        state = inspect(engine, name)
    finally:
        docker(engine, "rm", "--force", name, check=False)
    assert str(UID) == user
    assert (0, False) == (state["ExitCode"], state["OOMKilled"])
    records = [
        json.loads(line)
        for path in (data / "events").glob("*.jsonl")
        for line in path.read_text().splitlines()
    ]
    assert [("in-a-box", "new_checkout", "on")] == [
        (record["visitor_id"], record["flag"], record["variation"])
        for record in records
        if record["kind"] == "decision"
    ]


def test_the_final_stage_has_no_build_tools_and_is_not_root(engine: dict[str, str]) -> None:
    """No compiler, pip or package cache in the image; its user is 10001, its entrypoint
    exec form, its one volume the data directory; its size is reported."""
    found = docker(
        engine, "run", "--rm", "--entrypoint", "sh", IMAGE, "-c",
        "command -v gcc cc make pip pip3; ls /var/cache/apt /var/lib/apt/lists",
    ).stdout.split()  # fmt: skip
    config = json.loads(docker(engine, "image", "inspect", IMAGE).stdout)[0]
    size = config["Size"]
    print(f"\nimage {IMAGE}: {size / 1e6:.0f} MB")
    assert [] == [path for path in found if not path.endswith(":")]
    assert f"{UID}:{UID}" == config["Config"]["User"]
    assert ["flagpost"] == config["Config"]["Entrypoint"]
    assert {"/var/lib/flagpost": {}} == config["Config"]["Volumes"]
    assert ["CMD", "python3"] == config["Config"]["Healthcheck"]["Test"][:2]


def test_the_dockerfile_passes_hadolint() -> None:
    """hadolint finds nothing to warn about in the Dockerfile."""
    result = subprocess.run(
        ["hadolint", str(ROOT / "Dockerfile")], capture_output=True, text=True, check=False
    )
    assert ("", 0) == (result.stdout + result.stderr, result.returncode)


def inspect(env: dict[str, str], name: str) -> dict[str, Any]:
    state: dict[str, Any] = json.loads(
        docker(env, "inspect", "--format", "{{json .State}}", name).stdout
    )
    return state
