"""The HTTP side of warnsvc (aiohttp.web)."""

from __future__ import annotations
