"""Settings from the environment and flags, and the real ``flagpost serve`` process."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from service import redaction
from service.settings import DEFAULT_RULES, SettingsError, load_settings
from tests.service.conftest import DEMO
from tests.service.process import free_port, running_service, service_env, wait_ready


def test_defaults() -> None:
    """With nothing set, flagpost serves the bundled rules on 127.0.0.1:8080."""
    settings = load_settings({})
    assert (DEFAULT_RULES, "127.0.0.1", 8080, 60.0) == (
        settings.rules,
        settings.host,
        settings.port,
        settings.refresh_interval,
    )
    assert Path(DEFAULT_RULES).is_file()
    assert ("asyncio" if sys.platform == "win32" else "uvloop") == settings.event_loop


def test_flags_override_environment() -> None:
    """A command-line value wins over its environment variable."""
    settings = load_settings(
        {"FLAGPOST_PORT": "9000", "FLAGPOST_API_KEYS": "a" * 16 + ", " + "b" * 16},
        {"port": "9001", "host": None},
    )
    assert (9001, ("a" * 16, "b" * 16)) == (
        settings.port,
        tuple(key.reveal() for key in settings.api_keys),
    )


@pytest.mark.parametrize(
    ("environ", "message"),
    [({"FLAGPOST_PORT": "http"}, "FLAGPOST_PORT='http' must be a port number"),
     ({"FLAGPOST_PORT": "70000"}, "must be a port number"),
     ({"FLAGPOST_REFRESH_INTERVAL": "0"}, "must be a positive number"),
     ({"FLAGPOST_LOG_FORMAT": "xml"}, "must be one of json, console"),
     ({"FLAGPOST_RULES": "ftp://rules"}, "must be a file path or an http(s) URL"),
     ({"FLAGPOST_MAX_BODY": "10"}, "at least 1024"),
     ({"FLAGPOST_ACCESS_LOG": "sometimes"}, "must be true or false"),
     ({"FLAGPOST_EVENT_LOOP": "trio"}, "FLAGPOST_EVENT_LOOP='trio' must be one of uvloop, asyncio"),
     ({"FLAGPOST_API_KEYS": "short"}, "FLAGPOST_API_KEYS='***' each API key must be at least 16"),
     ({"FLAGPOST_WEBHOOK_SECRET": "hush"}, "FLAGPOST_WEBHOOK_SECRET='***' must be at least 8"),
     ({"FLAGPOST_EVENTS": "https://ann:pa55word@c.example/in?token=t0ken&format=xml"},
      "FLAGPOST_EVENTS='https://c.example/in?token=***&format=xml' 'https://c.example/in?token=***&format=xml' asks for format 'xml'"),
     ({"FLAGPOST_MAX_FLAGS": "0"}, "FLAGPOST_MAX_FLAGS='0' must be a whole number of at least 1"),
     ({"FLAGPOST_RULES": "https://u:pw@r.example/x", "FLAGPOST_RULES_AUTH": "Bearer 12345678"},
      "FLAGPOST_RULES='https://r.example/x' carries a user and password and FLAGPOST_RULES_AUTH is set too"),
     ({"FLAGPOST_BODY_TIMEOUT": "-1"}, "must be a positive number"),
     ({"FLAGPOST_WORKERS": "0"}, "FLAGPOST_WORKERS='0' must be auto or a whole number from 1 to 256"),
     ({"FLAGPOST_WORKERS": "2"},
      "FLAGPOST_WORKERS=2 with FLAGPOST_VISITORS=memory: each worker would keep visitor data"),
     ({"FLAGPOST_WORKERS": "2", "FLAGPOST_VISITORS": "redis://127.0.0.1:1/0",
       "FLAGPOST_WEBHOOK_SECRET": "hush-hush"},
      "FLAGPOST_WORKERS=2 with FLAGPOST_WEBHOOK_SECRET and no FLAGPOST_REDIS_URL")],
)  # fmt: skip
def test_invalid_settings_name_the_variable(environ: dict[str, str], message: str) -> None:
    """Each invalid setting is refused with its name and what it expects, secrets masked."""
    with pytest.raises(SettingsError, match=re.escape(message)):
        load_settings(environ)


def test_auto_workers_are_the_cpus_this_process_may_use() -> None:
    """FLAGPOST_WORKERS=auto is one worker per CPU of the process's affinity."""
    environ = {"FLAGPOST_WORKERS": "auto", "FLAGPOST_VISITORS": "redis://127.0.0.1:1/0"}
    assert len(os.sched_getaffinity(0)) == load_settings(environ).workers


SECRET_ENVIRON = {
    "FLAGPOST_API_KEYS": "k" * 20,
    "FLAGPOST_WEBHOOK_SECRET": "hush-hush",
    "FLAGPOST_EVENTS_AUTH": "Bearer events-t0ken",
    "FLAGPOST_RULES": "https://ann:pa55word@rules.example/flags.json?sig=s1gnature",
    "FLAGPOST_EVENTS": "file:ev,https://c.example/in?api_key=c011ector&format=odp",
}
HIDDEN = ("k" * 20, "hush-hush", "events-t0ken", "pa55word", "s1gnature", "c011ector")


def test_secrets_stay_out_of_the_settings_repr_and_public_view() -> None:
    """Neither repr(settings) nor settings.public() shows a secret, a URL password or a token."""
    settings = load_settings(SECRET_ENVIRON)
    for shown in (repr(settings), repr(settings.public())):
        assert [] == [secret for secret in HIDDEN if secret in shown]
    assert "https://rules.example/flags.json?sig=***" == settings.public()["rules"]
    assert ["file:ev", "https://c.example/in?api_key=***&format=odp"] == settings.public()["events"]


def test_redaction_masks_every_secret_the_settings_hold() -> None:
    """Once settings.secrets() are registered, redact() masks each secret, token and password."""
    redaction.register(load_settings(SECRET_ENVIRON).secrets())
    text = redaction.redact(" ".join(HIDDEN))
    assert [] == [secret for secret in HIDDEN if secret in text]


def _serve(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service", "serve", *args],
        env=env, capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip


def test_invalid_setting_stops_serve_with_one_line(tmp_path: Path) -> None:
    """flagpost serve with a bad setting prints one line and exits 2 before listening."""
    env = service_env(tmp_path, DEMO, free_port(), FLAGPOST_REFRESH_INTERVAL="soon")
    result = _serve(env)
    assert 2 == result.returncode
    assert [
        "flagpost: invalid setting: FLAGPOST_REFRESH_INTERVAL='soon' must be a positive number"
    ] == result.stderr.strip().splitlines()


def test_busy_port_is_one_clear_line(tmp_path: Path) -> None:
    """A port already in use gives one line and exit 1, not a traceback."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        env = service_env(tmp_path, DEMO, taken.getsockname()[1])
        result = _serve(env)
    assert 1 == result.returncode
    assert "cannot listen on 127.0.0.1:" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("event_loop", ["uvloop", "asyncio"])
def test_serve_answers_and_stops_cleanly_on_sigterm(tmp_path: Path, event_loop: str) -> None:
    """The real process serves the bundled rules on either event loop and exits 0 on SIGTERM,
    logging JSON (the access log, when asked for, with the request id)."""
    port = free_port()
    env = service_env(
        tmp_path,
        DEMO,
        port,
        FLAGPOST_LOG_LEVEL="info",
        FLAGPOST_ACCESS_LOG="yes",
        FLAGPOST_EVENT_LOOP=event_loop,
    )
    env.pop("FLAGPOST_RULES")  # the default: the bundled example rules
    log = tmp_path / "out.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "service", "serve", "--port", str(port)],
            env=env, stdout=output, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        wait_ready(f"http://127.0.0.1:{port}", process, log)
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/decide",
            data=b'{"visitor_code": "alice"}',
            method="POST",
            headers={"X-Request-Id": "trace-me-42"},
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            assert 8 == len(json.loads(response.read())["decisions"])
    finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=20)
    assert 0 == code
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    lifecycle = ("flagpost_starting", "rules_loaded", "flagpost_listening", "flagpost_stopped")
    assert list(lifecycle) == [line["event"] for line in lines if line["event"] in lifecycle]
    assert [event_loop] == [
        line["event_loop"] for line in lines if line["event"] == "flagpost_listening"
    ]
    access = [line for line in lines if line.get("logger") == "flagpost.access"]
    assert "trace-me-42" in {line.get("request_id") for line in access}


def test_running_service_helper_serves_given_rules(tmp_path: Path) -> None:
    """The end-to-end helper starts flagpost on the rules it is given."""
    rules = json.loads(DEMO.read_text())
    rules["revision"] = "helper"
    with (
        running_service(tmp_path, rules) as base,
        urllib.request.urlopen(f"{base}/readyz") as reply,
    ):
        assert "helper" == json.loads(reply.read())["revision"]
