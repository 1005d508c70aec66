"""A worker process under gunicorn's arbiter: flagpost's shell on the sockets gunicorn listens on.

gunicorn's own aiohttp worker (``aiohttp.GunicornWebWorker``) runs a ``web.Application``
through ``web.AppRunner``, that is through the application's router, which flagpost leaves
unused: its requests are answered by the shell on aiohttp's low-level server
(``service.shell``). ``ShellWorker`` is built on gunicorn's documented worker interface
instead: it builds the application from the server's settings, spools in a slot of its own
(``service.workers.slots``), answers on gunicorn's sockets, tells the arbiter it is alive,
publishes its metrics for the other workers (``service.workers.exchange``), and on SIGTERM
stops taking connections, finishes what it has and drains its events as one process does.

A worker that cannot start (a spool that cannot be written, say) exits with gunicorn's
boot-error status, which stops the arbiter with the reason logged rather than restarting
workers that would fail the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from gunicorn.arbiter import Arbiter
from gunicorn.workers.base import Worker

from service.app import create_app
from service.keys import METRICS
from service.logs import get_logger
from service.server import SHUTDOWN_TIMEOUT, ShellRunner, accept_on, new_event_loop
from service.workers.exchange import MetricsExchange
from service.workers.slots import claim_slot

if TYPE_CHECKING:
    from aiohttp import web

    from service.metrics import Metrics
    from service.workers.arbiter import FlagpostServer

__all__ = ["ShellWorker"]

log = get_logger(__name__)
#: Seconds between the worker's reports to the arbiter (its timeout is 30 s by default), and
#: between the publications of its metrics to the other workers.
HEARTBEAT = 1.0


class ShellWorker(Worker):  # type: ignore[misc]  # gunicorn is untyped
    """A gunicorn worker running flagpost's shell; its gunicorn application is the
    ``FlagpostServer`` of ``service.workers.arbiter``, which holds the settings."""

    def init_process(self) -> None:
        server: FlagpostServer = self.app
        self.settings = server.settings
        self.exchange = MetricsExchange(server.exchange_dir)
        self.loop = new_event_loop(self.settings.event_loop)
        asyncio.set_event_loop(self.loop)
        super().init_process()  # signals, the (unused) WSGI callable, then run()

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
        try:
            app = self._application()  # the disk, before the worker answers anything
            runner = ShellRunner(app, shutdown_timeout=SHUTDOWN_TIMEOUT)
            await runner.setup()
        except Exception as error:  # the same would happen to every worker: stop the arbiter
            log.error("worker_failed_to_start", error=str(error) or type(error).__name__)
            self.exit_code = Arbiter.WORKER_BOOT_ERROR
            return
        metrics = app[METRICS]
        try:
            access_log = logging.getLogger("flagpost.access") if self.settings.access_log else None
            servers = [
                await accept_on(runner, listener.sock, access_log=access_log)
                for listener in self.sockets
            ]
            log.info("worker_listening", pid=os.getpid())
            while self.alive:
                self.notify()
                await self._publish(metrics)
                if self.ppid != os.getppid():  # the arbiter is gone: so is this worker
                    log.warning("worker_orphaned", pid=os.getpid())
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), HEARTBEAT)
            for server in servers:
                server.close()
        finally:
            await runner.cleanup()
            await self._publish(metrics)  # the drained events' counts, for the arbiter to keep

    def _application(self) -> web.Application:
        spool_dir = None
        if self.settings.events:
            slot = claim_slot(Path(self.settings.spool_dir))
            spool_dir = slot.spool_dir
            log.info("worker_slot", slot=slot.number, spool_dir=str(spool_dir))
        return create_app(self.settings, spool_dir=spool_dir, combine_metrics=self.exchange.combine)

    async def _publish(self, metrics: Metrics) -> None:
        try:
            render = metrics.snapshot()
            await asyncio.to_thread(lambda: self.exchange.publish(render()))
        except OSError as error:  # the others see this worker's last figures until it works
            log.warning("metrics_not_published", error=str(error))
