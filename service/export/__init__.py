"""The enriched-events export: the raw event files of every replica into a Parquet lake,
de-duplicated, sessionized and attributed, and SQL over it (``flagpost export``, ``flagpost
query``, ``flagpost forget``).

``inputs`` finds the closed files and keeps the manifest; ``lake`` is the layout, the lock
and runs that land whole; ``sql`` the queries; ``engines`` runs them (DuckDB, or Spark);
``job`` is one export; ``query`` and ``forget`` the other commands; ``cli`` their arguments.
Needs the ``lake`` extra (``pip install 'flagpost[lake]'``: DuckDB, pyarrow, tqdm), and the
``spark`` extra for ``--engine spark``; the service itself never imports this package.

    ExportError            a one-line reason the export or the query cannot go on
    ├── LakeLocked         another export is writing to the lake
    ├── InputUnreadable    an input directory cannot be read
    └── LakeUnwritable     the lake cannot be written (nothing half-written is left)
"""

from __future__ import annotations

__all__ = ["ExportError", "InputUnreadable", "LakeLocked", "LakeUnwritable"]


class ExportError(Exception):
    """The export or the query cannot go on; the message says why in one line."""


class LakeLocked(ExportError):
    """Another export holds the lake's lock."""


class InputUnreadable(ExportError):
    """An input directory cannot be listed or a file in it read."""


class LakeUnwritable(ExportError):
    """The lake cannot be written."""
