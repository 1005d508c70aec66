"""The decision core stays free of I/O frameworks, logging and the service layer."""

from __future__ import annotations

import ast
import subprocess
import sys

from tests.rules.helpers import ROOT

FORBIDDEN = ("aiohttp", "asyncio", "orjson", "structlog", "logging", "service")


def test_importing_rules_loads_no_io_or_logging_module() -> None:
    """A fresh interpreter that imports rules and decides has loaded none of the forbidden modules."""
    probe = (
        "import sys, rules; "
        "r = rules.load(open(sys.argv[1], 'rb').read()); r.decide_all('v'); "
        f"print(' '.join(m for m in {FORBIDDEN!r} if m in sys.modules))"
    )
    demo = str(ROOT / "rules" / "examples" / "demo.json")
    result = subprocess.run(
        [sys.executable, "-c", probe, demo], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert "" == result.stdout.strip()


def test_rules_sources_import_only_the_standard_library_xxhash_and_re2() -> None:
    """Every import statement in rules/ names the standard library, xxhash, RE2 or rules itself."""
    allowed = set(sys.stdlib_module_names) | {"xxhash", "re2", "rules", "__future__"}
    found: dict[str, str] = {}
    for path in (ROOT / "rules").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in allowed or top in FORBIDDEN:
                    found[f"{path.name}: {name}"] = top
    assert {} == found
