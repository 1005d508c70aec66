"""A real Docker engine for the tests, with data of its own, and the image's base built here.

No image registry is reachable from the machines the tests run on, so the Dockerfile's base
(``debian:bookworm-slim``) is made from the Debian mirror with ``mmdebstrap`` and imported under
that name; the Dockerfile is then built unchanged. The machine's CA bundle goes into the base
(as a local CA, which Debian's ``ca-certificates`` keeps), since HTTPS from a build may pass
through a proxy with a CA of its own.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

BASE_IMAGE = "debian:bookworm-slim"
MIRROR = "http://deb.debian.org/debian"
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
#: A base made within this many seconds is used again (it takes half a minute to make).
BASE_FRESH_FOR = 7 * 86400
READY_WITHIN = 60.0


def require(command: str, package: str) -> str:
    found = shutil.which(command)
    assert found is not None, f"{command} is not installed (apt-get install {package})"
    return found


@contextmanager
def running_docker() -> Iterator[dict[str, str]]:
    """``dockerd`` with its own data, exec root and socket for the length of a block; yields
    the environment for ``docker`` commands that talk to it."""
    dockerd = require("dockerd", "docker.io")
    require("docker", "docker.io")
    # A short path: the socket's must fit in a sockaddr_un.
    root = Path(tempfile.mkdtemp(prefix="fp-docker-"))
    socket = root / "docker.sock"
    log = (root / "dockerd.log").open("ab")
    process = subprocess.Popen(
        [
            dockerd,
            "--host", f"unix://{socket}",
            "--data-root", str(root / "data"),
            "--exec-root", str(root / "exec"),
            "--pidfile", str(root / "dockerd.pid"),
        ],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    env = {**os.environ, "DOCKER_HOST": f"unix://{socket}", "DOCKER_BUILDKIT": "0"}
    try:
        deadline = time.monotonic() + READY_WITHIN
        while docker(env, "version", check=False).returncode != 0:
            assert process.poll() is None, (root / "dockerd.log").read_text(errors="replace")
            assert time.monotonic() < deadline, "dockerd did not start"
            time.sleep(0.2)
        yield env
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
        subprocess.run(["ip", "link", "delete", "docker0"], capture_output=True, check=False)
        shutil.rmtree(root, ignore_errors=True)


def docker(
    env: dict[str, str], *args: str, check: bool = True, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    """Run ``docker args...`` on the engine of ``env``; its output as text."""
    result = subprocess.run(
        ["docker", *args], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and result.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)}: {result.stderr or result.stdout}")
    return result


def import_base(env: dict[str, str], cache: Path) -> None:
    """Make the base image with ``mmdebstrap`` (or take the one made lately) and import it
    under the name the Dockerfile's ``FROM`` uses."""
    tarball = cache / "bookworm-slim.tar"
    if not tarball.exists() or time.time() - tarball.stat().st_mtime > BASE_FRESH_FOR:
        cache.mkdir(parents=True, exist_ok=True)
        partial = tarball.with_suffix(".partial")
        hooks = [
            'mkdir -p "$1/usr/local/share/ca-certificates" "$1/etc/ssl/certs"',
            f'cp {CA_BUNDLE} "$1/usr/local/share/ca-certificates/machine.crt"',
            f'cp {CA_BUNDLE} "$1/etc/ssl/certs/ca-certificates.crt"',
            'rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*',
        ]
        subprocess.run(
            [
                require("mmdebstrap", "mmdebstrap"), "--variant=minbase", "--format=tar", "--quiet",
                f"--customize-hook={' && '.join(hooks)}", "bookworm", str(partial),
                f"deb {MIRROR} bookworm main",
                f"deb {MIRROR}-security bookworm-security main",
            ],
            check=True, capture_output=True, timeout=600,
        )  # fmt: skip
        partial.rename(tarball)
    docker(env, "import", str(tarball), BASE_IMAGE)
