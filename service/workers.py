"""Worker processes under gunicorn: ``--worker-class service.workers.ShellWorker``.

gunicorn's own aiohttp worker (``aiohttp.GunicornWebWorker``) runs a ``web.Application``
through ``web.AppRunner``, that is through the application's router, which flagpost leaves
unused: its requests are answered by the shell on aiohttp's low-level server
(``service.shell``). ``ShellWorker`` is built on gunicorn's documented worker interface
instead: each worker builds the application from the ``FLAGPOST_*`` settings (or runs the one
gunicorn loads, e.g. ``service.workers:create``), answers on the sockets gunicorn listens on,
tells the arbiter it is alive, and on SIGTERM stops taking connections, finishes what it has
and drains its events as ``flagpost serve`` does.

    gunicorn 'service.workers:create' --worker-class service.workers.ShellWorker \\
        --workers 2 --bind 127.0.0.1:8080

Each worker process is a whole flagpost: its own rules, sessions and events pipeline (so its
own ``FLAGPOST_SPOOL_DIR``: two processes cannot share a spool). A worker that cannot start
(a spool in use, say) exits with gunicorn's boot-error status, which stops the arbiter with
the reason logged rather than restarting workers that would fail the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from gunicorn.arbiter import Arbiter
from gunicorn.workers.base import Worker

from service.app import create_app
from service.logs import configure_logging, get_logger
from service.server import SHUTDOWN_TIMEOUT, ShellRunner, accept_on, new_event_loop
from service.settings import load_settings

__all__ = ["ShellWorker", "create"]

log = get_logger(__name__)
#: Seconds between the worker's reports to the arbiter (its timeout is 30 s by default).
HEARTBEAT = 1.0


def create() -> web.Application:
    """The application on the ``FLAGPOST_*`` settings of the environment."""
    settings = load_settings(os.environ, {})
    configure_logging(settings.log_format, settings.log_level)
    return create_app(settings)


class ShellWorker(Worker):  # type: ignore[misc]  # gunicorn is untyped
    """A gunicorn worker running flagpost's shell on the sockets gunicorn listens on."""

    def init_process(self) -> None:
        settings = load_settings(os.environ, {})
        self.loop = new_event_loop(settings.event_loop)
        asyncio.set_event_loop(self.loop)
        super().init_process()  # signals, the app (load_wsgi), then run()

    def init_signals(self) -> None:
        # The loop's own handlers, so a signal wakes it; as gunicorn's aiohttp worker does.
        self.loop.add_signal_handler(signal.SIGTERM, self._stop, 0)
        self.loop.add_signal_handler(signal.SIGINT, self._stop, 0)
        self.loop.add_signal_handler(signal.SIGQUIT, self._stop, 0)
        self.loop.add_signal_handler(signal.SIGUSR1, self.handle_usr1, signal.SIGUSR1, None)
        self.loop.add_signal_handler(signal.SIGABRT, self._stop, 1)
        signal.signal(signal.SIGWINCH, signal.SIG_IGN)
        signal.siginterrupt(signal.SIGTERM, False)

    def run(self) -> None:
        self.exit_code = 0
        self._stopping = asyncio.Event()
        try:
            self.loop.run_until_complete(self._serve())
        finally:
            self.loop.close()
        sys.exit(self.exit_code)

    def _stop(self, code: int) -> None:
        self.alive = False
        self.exit_code = self.exit_code or code
        self._stopping.set()

    async def _serve(self) -> None:
        app = await self._application()
        access_log = logging.getLogger("flagpost.access") if self.cfg.accesslog else None
        runner = ShellRunner(app, shutdown_timeout=SHUTDOWN_TIMEOUT)
        try:
            await runner.setup()
        except Exception as error:  # e.g. a spool another worker holds: stop the arbiter
            log.error("worker_failed_to_start", error=str(error) or type(error).__name__)
            self.exit_code = Arbiter.WORKER_BOOT_ERROR
            return
        try:
            servers = [
                await accept_on(runner, listener.sock, access_log=access_log)
                for listener in self.sockets
            ]
            log.info("worker_listening", pid=os.getpid())
            while self.alive:
                self.notify()
                if self.ppid != os.getppid():  # the arbiter is gone: so is this worker
                    log.warning("worker_orphaned", pid=os.getpid())
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), HEARTBEAT)
            for server in servers:
                server.close()
        finally:
            await runner.cleanup()

    async def _application(self) -> web.Application:
        loaded: Any = self.wsgi
        if isinstance(loaded, web.Application):
            return loaded
        factory: Callable[[], web.Application | Awaitable[web.Application]] = loaded
        made = factory()
        if isinstance(made, web.Application):
            return made
        return await made
