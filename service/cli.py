"""The ``flagpost`` command.

    flagpost serve [--rules SOURCE] [--port N] ...   (every FLAGPOST_* setting has a flag)
    flagpost validate FILE
    flagpost decide FILE --visitor V [--flag K ...] [--context JSON] [--environment E] [--now T]
    flagpost export --events DIR [--events DIR ...] --lake DIR [--account-id ID] [--now T] ...
    flagpost query --lake DIR [--account-id ID] [--format table|csv|json] (SQL | -f FILE)
    flagpost forget --lake DIR [--account-id ID] VISITOR_ID ...

Every failure is one clear line on stderr and a non-zero exit status, never a traceback:
1 for invalid rules or a failed decision, 2 for unusable arguments.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import orjson

import rules
from service.events.records import CLIENT_VERSION
from service.settings import Settings, SettingsError, load_settings

__all__ = ["main"]

EXIT_INVALID = 1
EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"flagpost: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="flagpost", description="Feature-flag decisions from a rules file.")
    parser.add_argument("--version", action="version", version=f"flagpost {CLIENT_VERSION}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    serve = commands.add_parser("serve", help="run the decision service", description=_SERVE_HELP)
    for name, variable, default, text in Settings.describe():
        serve.add_argument(
            f"--{name.replace('_', '-')}",
            dest=name,
            metavar=variable.removeprefix("FLAGPOST_"),
            help=f"{text} (env {variable}, default {default})",
        )

    validate = commands.add_parser("validate", help="check a rules file and list every problem")
    validate.add_argument("file", type=Path, help="the rules document (JSON)")

    decide = commands.add_parser("decide", help="print a visitor's decisions as JSON")
    decide.add_argument("file", type=Path, help="the rules document (JSON)")
    decide.add_argument("--visitor", required=True, help="the visitor code (1-255 characters)")
    decide.add_argument(
        "--flag", action="append", dest="flags", metavar="KEY", help="only this flag (repeatable)"
    )
    decide.add_argument("--context", default="{}", help="targeting attributes as a JSON object")
    decide.add_argument("--environment", help="environment name (default: the first declared)")
    decide.add_argument(
        "--now", help="evaluation time, ISO 8601 or epoch seconds (default: the clock)"
    )
    _add_lake_commands(commands)
    return parser


def _add_lake_commands(commands: Any) -> None:
    export = commands.add_parser(
        "export", help="turn event files into the enriched-events Parquet lake"
    )
    export.add_argument(
        "--events",
        action="append",
        required=True,
        type=Path,
        metavar="DIR",
        help="a directory of event files (repeatable: one per replica)",
    )
    export.add_argument("--lake", required=True, type=Path, metavar="DIR", help="the lake")
    export.add_argument("--account-id", help="the account (default: FLAGPOST_ACCOUNT_ID)")
    export.add_argument("--now", help="the time to act as of, ISO 8601 (default: the clock)")
    export.add_argument(
        "--every", type=float, metavar="SECONDS", help="keep running, an export every SECONDS"
    )
    export.add_argument(
        "--lateness",
        type=float,
        default=3600.0,
        metavar="SECONDS",
        help="how long after its end a day is complete (default 3600)",
    )
    export.add_argument(
        "--session-gap",
        type=float,
        default=1800.0,
        metavar="SECONDS",
        help="inactivity that ends a session (default 1800)",
    )
    export.add_argument(
        "--retention-days",
        type=int,
        default=365,
        metavar="DAYS",
        help="partitions older than this are removed (default 365)",
    )
    export.add_argument(
        "--engine",
        choices=("duckdb", "spark"),
        default="duckdb",
        help="where the enrichment runs (default duckdb; spark needs the spark extra and Java)",
    )
    query = commands.add_parser("query", help="run SQL over the lake (tables decisions, events)")
    query.add_argument("--lake", required=True, type=Path, metavar="DIR", help="the lake")
    query.add_argument("--account-id", help="the account (default: the lake's only one)")
    query.add_argument("--format", choices=("table", "csv", "json"), default="table")
    query.add_argument(
        "--engine",
        choices=("duckdb", "spark"),
        default="duckdb",
        help="what runs the SQL (spark: translated from DuckDB's dialect)",
    )
    query.add_argument("-f", "--file", type=Path, help="read the SQL from FILE")
    query.add_argument("sql", nargs="?", help="the SQL")
    forget = commands.add_parser("forget", help="erase visitors' rows from the lake")
    forget.add_argument("--lake", required=True, type=Path, metavar="DIR", help="the lake")
    forget.add_argument("--account-id", help="the account (default: the lake's only one)")
    forget.add_argument("visitors", nargs="+", metavar="VISITOR_ID")  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        if args.command == "serve":
            return _serve(args)
        if args.command == "validate":
            return _validate(args.file)
        if args.command in ("export", "query", "forget"):
            return _lake_command(args)
        return _decide(args)
    except _Failure as failure:
        print(f"flagpost: {failure}", file=sys.stderr)
        return failure.status


class _Failure(Exception):
    def __init__(self, message: str, status: int = EXIT_INVALID) -> None:
        super().__init__(message)
        self.status = status


_SERVE_HELP = (
    "Answer decisions over HTTP. Settings come from FLAGPOST_* environment variables; "
    "each flag below overrides its variable."
)


def _serve(args: argparse.Namespace) -> int:
    # Imported here: the other commands (an export, a validation) never load the server.
    from service.events.spool import SpoolLocked  # noqa: PLC0415
    from service.server import ListenError, run  # noqa: PLC0415

    overrides = {name: getattr(args, name) for name, *_ in Settings.describe()}
    try:
        settings = load_settings(os.environ, overrides)
    except SettingsError as error:
        raise _Failure(f"invalid setting: {error}", EXIT_USAGE) from None
    try:
        if settings.workers > 1:
            _run_workers(settings)
        else:
            run(settings)
    except SpoolLocked as error:
        raise _Failure(str(error)) from None
    except ListenError as error:
        raise _Failure(
            f"cannot listen on {settings.host}:{settings.port}: {error.strerror}"
        ) from None
    return 0


def _run_workers(settings: Settings) -> None:
    # Imported here: one process never loads gunicorn.
    from service.workers.arbiter import run_workers  # noqa: PLC0415

    run_workers(settings)


def _lake_command(args: argparse.Namespace) -> int:
    try:
        from service.export import ExportError  # noqa: PLC0415
        from service.export.cli import run_export, run_forget, run_query  # noqa: PLC0415
    except ImportError as missing:
        raise _Failure(
            f"flagpost {args.command} needs the lake extra ({missing.name} is missing): "
            "pip install 'flagpost[lake]'"
        ) from None
    try:
        commands = {"export": run_export, "query": run_query, "forget": run_forget}
        return commands[args.command](args)
    except ExportError as error:
        raise _Failure(str(error)) from None
    except ValueError as error:  # an unusable argument
        raise _Failure(str(error), EXIT_USAGE) from None


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise _Failure(f"{path}: no such file") from None
    except IsADirectoryError:
        raise _Failure(f"{path}: is a directory, not a rules file") from None
    except OSError as error:
        raise _Failure(f"{path}: cannot read: {error.strerror}") from None


def _validate(path: Path) -> int:
    try:
        ruleset = rules.load(_read(path))
    except rules.InvalidRuleset as invalid:
        count = len(invalid.errors)
        print(f"{path}: {count} problem{'s' if count != 1 else ''}", file=sys.stderr)
        for problem in invalid.errors:
            print(f"  {problem}", file=sys.stderr)
        return EXIT_INVALID
    print(
        f"{path}: valid, revision {ruleset.revision}, {len(ruleset.flag_keys)} flags, "
        f"{len(ruleset.events)} events, environments {', '.join(ruleset.environments)}"
    )
    return 0


def _decide(args: argparse.Namespace) -> int:
    context = _parse_context(args.context)
    now = _parse_now(args.now)
    try:
        ruleset = rules.load(_read(args.file))
    except rules.InvalidRuleset as invalid:
        raise _Failure(f"{args.file}: {invalid}") from None
    try:
        if args.flags:
            decisions = {
                key: ruleset.decide(key, args.visitor, context, args.environment, now)
                for key in args.flags
            }
        else:
            decisions = ruleset.decide_all(args.visitor, context, args.environment, now)
    except rules.RulesError as error:
        raise _Failure(str(error)) from None
    output = {
        "visitor_code": args.visitor,
        "revision": ruleset.revision,
        "environment": args.environment or ruleset.environments[0],
        "decisions": {key: decisions[key].as_dict() for key in sorted(decisions)},
    }
    sys.stdout.buffer.write(orjson.dumps(output, option=orjson.OPT_INDENT_2) + b"\n")
    return 0


def _parse_context(text: str) -> dict[str, Any]:
    try:
        context = orjson.loads(text)
    except orjson.JSONDecodeError as error:
        raise _Failure(f"--context is not valid JSON: {error}", EXIT_USAGE) from None
    if not isinstance(context, dict):
        raise _Failure("--context must be a JSON object of attributes", EXIT_USAGE)
    return context


def _parse_now(text: str | None) -> float | None:
    if text is None:
        return None
    instant = rules.to_instant(text)
    if instant is None:
        try:
            instant = float(text)
        except ValueError:
            raise _Failure(
                f"--now {text!r} is neither ISO 8601 nor epoch seconds", EXIT_USAGE
            ) from None
    return instant


if __name__ == "__main__":
    sys.exit(main())
