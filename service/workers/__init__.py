"""Worker processes: ``flagpost serve --workers N`` answers on one port with N processes.

gunicorn's arbiter (``arbiter``) forks the workers, replaces one that dies and stops them all
on SIGTERM; each worker (``worker.ShellWorker``) is a whole flagpost. What must be one for the
whole server is made so here:

- ``slots``: each worker spools in a directory of its own, a slot a dead worker's successor
  takes over, so what the dead one spooled is replayed;
- ``exchange``: each worker publishes its metrics every second and ``/metrics`` on any worker
  answers with the sum of all of them.

This package's modules are imported by path (``service.workers.arbiter``); nothing is imported
here, so importing one of them does not import gunicorn's worker with the whole app.
"""
