"""Delivery channels: feeds, email and webhooks publish confirmed events to their recipients."""

from __future__ import annotations
