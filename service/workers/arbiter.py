"""``flagpost serve --workers N``: gunicorn's arbiter with N ``ShellWorker`` processes.

gunicorn is the process manager: it listens once, forks the workers onto that socket,
replaces a worker that dies, and on SIGTERM asks every worker to stop and waits for them
(``graceful_timeout``: the requests' grace and the events' drain, with room to spare) before
it exits 0. What this module adds is flagpost's side of running several processes:

- the spool directory is the server's (its lock is held here, so no other server uses it),
  and spools a layout no longer in use left (one process's, or slots beyond N) are moved into
  slot 0's before any worker starts (``service.events.spool.adopt_spools``);
- the metrics exchange directory, on ``/dev/shm`` where there is one (so it works on a
  read-only root filesystem), with gunicorn's heartbeat files; a reaped worker's counters are
  folded into the retired figures (``exchange.retire``);
- gunicorn's own log lines go through flagpost's logging, one format for the whole server.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gunicorn.app.base import BaseApplication
from gunicorn.glogging import Logger

from service.events.spool import WORKER_PREFIX, SpoolLock, adopt_spools
from service.logs import configure_logging, get_logger
from service.server import SHUTDOWN_TIMEOUT
from service.settings import Settings
from service.workers.exchange import retire

__all__ = ["FlagpostServer", "run_workers"]

log = get_logger(__name__)
#: Seconds a stopping worker gets beyond its requests' grace and its events' drain.
STOP_MARGIN = 5.0


class FlagpostServer(BaseApplication):  # type: ignore[misc]  # gunicorn is untyped
    """gunicorn's application: what every worker is told."""

    def __init__(self, settings: Settings, exchange_dir: Path) -> None:
        self.settings = settings
        self.exchange_dir = exchange_dir
        super().__init__()

    def load_config(self) -> None:
        settings = self.settings
        host = f"[{settings.host}]" if ":" in settings.host else settings.host
        options: dict[str, Any] = {
            "bind": [f"{host}:{settings.port}"],
            "workers": settings.workers,
            "worker_class": "service.workers.worker.ShellWorker",
            "graceful_timeout": math.ceil(SHUTDOWN_TIMEOUT + settings.drain_timeout + STOP_MARGIN),
            "worker_tmp_dir": str(self.exchange_dir.parent),
            "logger_class": _Logging,
            "loglevel": settings.log_level,
            "proc_name": "flagpost",
            "control_socket_disable": True,  # it would be written under $HOME
            "child_exit": self._child_exit,
        }
        for name, value in options.items():
            self.cfg.set(name, value)

    def load(self) -> Callable[..., Any]:
        return _not_wsgi

    def _child_exit(self, arbiter: Any, worker: Any) -> None:
        try:
            retire(self.exchange_dir, worker.pid)
        except OSError as error:
            log.warning("metrics_not_retired", pid=worker.pid, error=str(error))


def _not_wsgi(*args: Any) -> None:
    raise RuntimeError("flagpost's workers answer with their own shell, never through WSGI")


class _Logging(Logger):  # type: ignore[misc]  # gunicorn is untyped
    """gunicorn's log lines, handed to flagpost's logging (configured on the root logger)."""

    def setup(self, cfg: Any) -> None:
        self.cfg = cfg
        self.loglevel = self.LOG_LEVELS.get(cfg.loglevel.lower(), logging.INFO)
        self.error_log.setLevel(self.loglevel)
        self.error_log.propagate = True
        self.access_log.propagate = False  # flagpost's access log is its own (FLAGPOST_ACCESS_LOG)


def run_workers(settings: Settings) -> None:
    """Serve with ``settings.workers`` processes until SIGTERM; exits the process (gunicorn's
    arbiter does) with 0 after a graceful stop. Raises ``SpoolLocked`` if another server uses
    the spool directory."""
    configure_logging(settings.log_format, settings.log_level)
    log.info("flagpost_starting", settings=settings.public())
    lock = None
    if settings.events:
        root = Path(settings.spool_dir)
        lock = SpoolLock(root)
        lock.acquire()
        _adopt_unused_spools(root, settings.workers)
    exchange_dir = Path(tempfile.mkdtemp(prefix="flagpost-metrics-", dir=_shared_memory()))
    arbiter = os.getpid()
    try:
        FlagpostServer(settings, exchange_dir).run()
    finally:
        # A worker leaves the arbiter's run() by SystemExit too (gunicorn forks it there):
        # what the arbiter holds is the arbiter's to let go.
        if os.getpid() == arbiter:
            shutil.rmtree(exchange_dir, ignore_errors=True)
            if lock is not None:
                lock.release()


def _adopt_unused_spools(root: Path, workers: int) -> None:
    unused = [root]  # a single process's spools, kept right in the spool directory
    for directory in root.glob(f"{WORKER_PREFIX}*"):
        number = directory.name.removeprefix(WORKER_PREFIX)
        if directory.is_dir() and number.isdigit() and int(number) >= workers:
            unused.append(directory)
    moved = adopt_spools(unused, root / f"{WORKER_PREFIX}0")
    if moved:
        log.warning("spools_adopted", batches=moved, spool_dir=str(root))


def _shared_memory() -> str | None:
    with contextlib.suppress(OSError):
        probe = tempfile.TemporaryFile(dir="/dev/shm")  # noqa: SIM115
        probe.close()
        return "/dev/shm"
    return None  # the temporary directory
