"""No configured secret ever shows: a real flagpost with secrets in every setting that takes
one, whose rules source and collector both fail (so their errors are logged and shown), is
searched for each of them in its whole log and in ``GET /v1/config``."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tests.service.conftest import DEMO
from tests.service.process import free_port, start_service

SECRETS = {
    "api key": "k3y-0123456789abcdef",
    "webhook secret": "wh00k-s3cret",
    "rules authorization": "r-t0ken-abcdef",
    "rules URL token": "rul3s-qu3ry-t0ken",
    "collector URL password": "c0ll-pa55",
    "collector URL token": "c0ll-qu3ry-t0ken",
}


def test_no_secret_reaches_the_log_or_the_config(tmp_path: Path) -> None:
    """Every configured secret is absent from the log and /v1/config, though the failing
    source and sink put their URLs in error messages."""
    (tmp_path / "cache").mkdir()
    shutil.copy(DEMO, tmp_path / "cache" / "rules.json")  # served while the source fails
    closed = free_port()  # nothing listens here: both the source and the sink fail
    rules_url = f"http://127.0.0.1:{closed}/rules.json?sig={SECRETS['rules URL token']}"
    collector = (
        f"http://bob:{SECRETS['collector URL password']}@127.0.0.1:{closed}/in"
        f"?api_key={SECRETS['collector URL token']}"
    )
    process, base = start_service(
        tmp_path,
        DEMO,
        FLAGPOST_RULES=rules_url,
        FLAGPOST_REFRESH_INTERVAL="0.2",
        FLAGPOST_EVENTS=collector,
        FLAGPOST_SINK_TIMEOUT="0.3",
        FLAGPOST_API_KEYS=SECRETS["api key"],
        FLAGPOST_WEBHOOK_SECRET=SECRETS["webhook secret"],
        FLAGPOST_RULES_AUTH=f"Bearer {SECRETS['rules authorization']}",
        FLAGPOST_LOG_LEVEL="debug",
        FLAGPOST_ACCESS_LOG="true",
    )
    headers = {"X-API-Key": SECRETS["api key"]}
    try:
        event = {"action": "opened", "identifiers": {"fs_user_id": "v1"}}
        sent = urllib.request.Request(
            f"{base}/v1/odp/events", data=json.dumps(event).encode(), headers=headers
        )
        urllib.request.urlopen(sent, timeout=5).read()
        deadline = time.monotonic() + 20
        while True:  # until the source and the sink have both failed and said so
            request = urllib.request.Request(f"{base}/v1/config", headers=headers)
            config = urllib.request.urlopen(request, timeout=5).read().decode()
            shown = json.loads(config)
            if shown["last_error"] and shown["events"]["sinks"][0]["last_error"]:
                break
            assert time.monotonic() < deadline, config
            time.sleep(0.2)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
    log = (tmp_path / "flagpost.log").read_text()
    assert "events_sink_down" in log
    assert "rules_refresh_failed" in log
    assert "127.0.0.1" in shown["source"]
    for text in (log, config):
        assert {} == {name: secret for name, secret in SECRETS.items() if secret in text}


def test_refused_settings_do_not_echo_secrets(tmp_path: Path) -> None:
    """An invalid setting's one-line refusal masks secrets and URL credentials."""
    from tests.service.process import service_env

    env = service_env(tmp_path, DEMO, free_port())
    env["FLAGPOST_EVENTS"] = f"https://u:{SECRETS['collector URL password']}@h/in?format=xml"
    env["FLAGPOST_API_KEYS"] = "short"
    result = subprocess.run(
        [sys.executable, "-m", "service", "serve"],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert 2 == result.returncode
    assert SECRETS["collector URL password"] not in result.stderr
