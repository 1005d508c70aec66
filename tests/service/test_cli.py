"""The flagpost command: validate and decide, with clear failures and no tracebacks."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from service.cli import main

ROOT = Path(__file__).resolve().parents[2]
DEMO = str(ROOT / "rules" / "examples" / "demo.json")


def test_validate_accepts_the_demo(capsys: pytest.CaptureFixture[str]) -> None:
    """A valid file gets a one-line summary and exit status 0."""
    assert 0 == main(["validate", DEMO])
    out = capsys.readouterr().out
    assert 1 == len(out.splitlines())
    assert "valid, revision 2026-12-02.1, 8 flags" in out


def test_validate_lists_every_problem(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A broken copy of the demo lists each problem with its path and exits 1."""
    doc = json.loads(Path(DEMO).read_text())
    doc["flags"]["new_checkout"]["rules"][2]["split"]["on"] = 40
    doc["flags"]["dark_mode"]["default"] = "dim"
    doc["segments"]["french_mobile"]["all"][0]["op"] = "within"
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps(doc))
    assert 1 == main(["validate", str(broken)])
    err = capsys.readouterr().err
    assert err.startswith(f"{broken}: 3 problems")
    for path in (
        "flags.new_checkout.rules[2].split:",
        "flags.dark_mode.default:",
        "segments.french_mobile.all[0].op:",
    ):
        assert path in err


def test_decide_prints_decisions_as_json(capsys: pytest.CaptureFixture[str]) -> None:
    """decide prints the visitor's decisions for the requested flags."""
    context = json.dumps({"geo": {"country": "BE"}, "device": "phone"})
    args = ["decide", DEMO, "--visitor", "v1", "--flag", "new_checkout", "--context", context]
    assert 0 == main(args)
    output = json.loads(capsys.readouterr().out)
    assert {"visitor_code": "v1", "revision": "2026-12-02.1", "environment": "production"} == {
        k: output[k] for k in ("visitor_code", "revision", "environment")
    }
    assert ["new_checkout"] == list(output["decisions"])
    assert "on" == output["decisions"]["new_checkout"]["variation"]


def test_decide_all_flags_with_environment_and_time(capsys: pytest.CaptureFixture[str]) -> None:
    """Without --flag every flag is decided; --environment and --now are honoured."""
    args = ["decide", DEMO, "--visitor", "v", "--environment", "development",
            "--now", "2026-12-25T10:00:00Z"]  # fmt: skip
    assert 0 == main(args)
    decisions = json.loads(capsys.readouterr().out)["decisions"]
    assert 8 == len(decisions)
    assert "on" == decisions["search_ranking"]["variation"]
    assert "on" == decisions["holiday_theme"]["variation"]


@pytest.mark.parametrize(
    ("args", "status", "message"),
    [
        (["validate", "/no/such/file.json"], 1, "no such file"),
        (["validate", "/"], 1, "is a directory"),
        (["decide", DEMO, "--visitor", ""], 1, "visitor code must not be empty"),
        (["decide", DEMO, "--visitor", "x" * 256], 1, "256 characters long"),
        (["decide", DEMO, "--visitor", "v", "--flag", "ghost"], 1, "flag 'ghost' not found"),
        (["decide", DEMO, "--visitor", "v", "--environment", "qa"], 1, "'qa' is not declared"),
        (["decide", DEMO, "--visitor", "v", "--context", "{"], 2, "--context is not valid JSON"),
        (["decide", DEMO, "--visitor", "v", "--context", "[]"], 2, "must be a JSON object"),
        (["decide", DEMO, "--visitor", "v", "--now", "soon"], 2, "neither ISO 8601"),
        (["decide", DEMO], 2, "--visitor"),
        (["launch"], 2, "invalid choice"),
    ],
)
def test_failures_are_one_clear_line(
    args: list[str], status: int, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Bad files and arguments give a message on stderr and a non-zero status."""
    assert status == run(args)
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err


def run(args: list[str]) -> int | str | None:
    """The exit status of the command, whether it returns or exits (as argparse does)."""
    try:
        return main(args)
    except SystemExit as exit_:
        return exit_.code


def test_installed_console_script_runs() -> None:
    """The installed `flagpost` command validates the demo from a real process."""
    command = shutil.which("flagpost")
    argv = [command] if command else [sys.executable, "-m", "service"]
    result = subprocess.run([*argv, "validate", DEMO], capture_output=True, text=True, check=False)
    assert (0, "") == (result.returncode, result.stderr)


def test_version_names_the_installed_release(capsys: pytest.CaptureFixture[str]) -> None:
    """flagpost --version prints the package's version and exits 0."""
    from service.events.records import CLIENT_VERSION

    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert (0, f"flagpost {CLIENT_VERSION}") == (exited.value.code, capsys.readouterr().out.strip())


def test_a_second_process_on_one_spool_refuses_with_one_line(tmp_path: Path) -> None:
    """Two flagpost processes on one spool directory: the second stops at once, saying why."""
    from tests.service.process import running_service, service_env

    with running_service(tmp_path, Path(DEMO)) as base:
        port = int(base.rsplit(":", 1)[1]) + 1
        second = subprocess.run(
            [sys.executable, "-m", "service", "serve"],
            env={**service_env(tmp_path, Path(DEMO), port), "FLAGPOST_EVENTS": "file:other"},
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
    last = second.stderr.strip().splitlines()[-1]
    assert 1 == second.returncode
    assert last.startswith("flagpost: the spool directory")
    assert "in use by another" in last
