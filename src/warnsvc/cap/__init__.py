"""CAP 1.2 output: every event as a Common Alerting Protocol alert, and an Atom index of them.

:mod:`warnsvc.cap.mapping` (pure data, light to import: the config reads its vocabularies) says
which urgency, severity and certainty each level of each scale gives; :mod:`warnsvc.cap.document`
builds the XML documents with lxml from stored event payloads.
"""

from __future__ import annotations
