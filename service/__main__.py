"""``python -m service`` runs the ``flagpost`` command; with no arguments, ``serve``."""

from __future__ import annotations

import sys

from service.cli import main

sys.exit(main(sys.argv[1:] or ["serve"]))
