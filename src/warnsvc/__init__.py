"""warnsvc: early-warning alert distribution.

Watches risk assessments (GCR2P's populations at risk first), detects confirmed changes of
risk level, and publishes them as feeds and, through later channels, email and webhooks.
"""

from __future__ import annotations

__version__ = "0.1.0"
