"""Sources of risk information: parsers of the pages and feeds warnsvc watches."""

from __future__ import annotations
