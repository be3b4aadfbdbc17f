"""``python -m warnsvc`` runs the command line."""

from __future__ import annotations

from warnsvc.cli import main

raise SystemExit(main())
