"""How the file sink names the files it writes, for the sink and for the export, which reads
them and must not load the sink's HTTP half (aiohttp) to do so."""

from __future__ import annotations

__all__ = ["OPEN_SUFFIX"]

#: Added to the name of a file the sink is still writing; taken off (a rename) once the file
#: is closed, whole.
OPEN_SUFFIX = ".open"
