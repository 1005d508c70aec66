"""The ``flagpost export`` and ``flagpost query`` commands, on parsed arguments."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from datetime import UTC, datetime, timedelta

from service.export import ExportError
from service.export.forget import forget
from service.export.job import ExportOptions, export
from service.export.lake import Lake
from service.export.query import account_of, connect, spark_answer
from service.export.query import run_query as answer

__all__ = ["run_export", "run_forget", "run_query"]


def run_export(args: argparse.Namespace) -> int:
    """Export once, or every ``--every`` seconds until SIGTERM or SIGINT; ValueError for an
    unusable argument, ExportError when the export cannot go on."""
    account = args.account_id or os.environ.get("FLAGPOST_ACCOUNT_ID")
    if not account:
        raise ValueError("name the account: --account-id ID, or set FLAGPOST_ACCOUNT_ID")
    if args.now is not None and args.every is not None:
        raise ValueError("--now and --every exclude each other: --every runs on the clock")
    if args.every is not None and args.every <= 0:
        raise ValueError("--every must be a positive number of seconds")
    for name in ("lateness", "session_gap"):
        if getattr(args, name) <= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be a positive number of seconds")
    if args.retention_days < 1:
        raise ValueError("--retention-days must be at least 1")
    now = _instant(args.now) if args.now else None
    stop = threading.Event()
    if args.every is not None:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stop.set())
    while True:
        options = ExportOptions(
            events=tuple(args.events),
            lake=args.lake,
            account_id=account,
            now=now or datetime.now(UTC),
            lateness=timedelta(seconds=args.lateness),
            session_gap=timedelta(seconds=args.session_gap),
            retention_days=args.retention_days,
            progress=sys.stderr.isatty(),
            engine=args.engine,
        )
        report = export(options)
        print(report.summary(), flush=True)
        if report.rejects_report is not None:
            print(f"rejected lines are listed in {report.rejects_report}", flush=True)
        if args.every is None or stop.wait(args.every):
            return 0


def run_query(args: argparse.Namespace) -> int:
    if (args.sql is None) == (args.file is None):
        raise ValueError("give the SQL either as an argument or with -f FILE")
    try:
        text = args.sql if args.file is None else args.file.read_text()
    except OSError as error:
        raise ExportError(f"{args.file}: {error.strerror}") from None
    lake = Lake(args.lake, account_of(args.lake, args.account_id))
    if args.engine == "spark":
        sys.stdout.write(spark_answer(lake, text, args.format))
        return 0
    con = connect(lake)
    try:
        sys.stdout.write(answer(con, text, args.format))
    finally:
        con.close()
    return 0


def run_forget(args: argparse.Namespace) -> int:
    lake = Lake(args.lake, account_of(args.lake, args.account_id))
    done = forget(lake, list(args.visitors))
    print(
        f"{done.rows} rows removed: {done.parts_rewritten} files rewritten, "
        f"{done.parts_removed} removed"
    )
    return 0


def _instant(text: str) -> datetime:
    try:
        instant = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"--now {text!r} is not an ISO 8601 instant") from None
    return instant if instant.tzinfo else instant.replace(tzinfo=UTC)
