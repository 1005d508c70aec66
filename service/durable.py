"""What makes a rename durable: the directory's entry on disk (``sync_directory``)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["sync_directory"]


def sync_directory(directory: Path) -> None:
    """fsync ``directory``: a file created or renamed in it is known to the disk only then."""
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
