"""Benchmark: parsing GCR2P country pages and the index.

Measures ``parse_country_page`` on the seed page wrapped in HTML and ``parse_index_page`` on a
40-situation index, against a baseline run in the same process: selectolax parsing the same
document and extracting its text, the least any HTML-reading parser must pay. Prints each
figure, then one JSON line with pages/s, the baseline, their ratio and peak RSS.

    python bench/parse_gcr2p.py [--seconds 2]
"""

from __future__ import annotations

import argparse
import html
import json
import resource
import time
from collections.abc import Callable
from pathlib import Path

from selectolax.lexbor import LexborHTMLParser

from warnsvc.sources.gcr2p import parse_country_page, parse_index_page

ROOT = Path(__file__).resolve().parents[1]
SEED = ROOT / "tests" / "fixtures" / "gcr2p" / "seed-nagorno-karabakh-2023-08-31.txt"


def country_page() -> str:
    lines = SEED.read_text(encoding="utf-8").splitlines()
    body = [f"<h1>{html.escape(lines[0])}</h1>"]
    for line in lines[1:]:
        text = line.strip()
        if text.startswith("•"):
            body.append(f"<ul><li>{html.escape(text.lstrip('• '))}</li></ul>")
        elif text:
            body.append(f"<p>{html.escape(text)}</p>")
    nav = "".join(f"<li><a href='/x{i}'>Menu item {i}</a></li>" for i in range(60))
    return (
        "<html><head><title>Nagorno-Karabakh (Armenia/Azerbaijan) - Global Centre for the "
        f"Responsibility to Protect</title></head><body><nav><ul>{nav}</ul></nav>"
        f"<main>{''.join(body)}</main><footer><p>Footer</p></footer></body></html>"
    )


def index_page(count: int = 40) -> str:
    levels = ["Current Crisis", "Imminent Risk", "Serious Concern"]
    parts = []
    for n, level in enumerate(levels):
        parts.append(f"<h2>{level}</h2>")
        for i in range(count // len(levels)):
            parts.append(
                f"<div><h3>Situation {n}-{i}</h3><p>Populations in place {i} face atrocity "
                f"crimes amid conflict.</p><a href='/countries/s-{n}-{i}/'>Continue Reading</a>"
                "</div>"
            )
    return f"<html><body><main><h1>Populations At Risk</h1>{''.join(parts)}</main></body></html>"


def rate(work: Callable[[], object], seconds: float) -> float:
    """Calls per second over about ``seconds``, after a short warm-up."""
    for _ in range(3):
        work()
    calls, started = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds:
        work()
        calls += 1
    return calls / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0)
    args = parser.parse_args()
    page, index = country_page(), index_page()
    figures = {}
    for name, doc, parse in (
        ("country_page", page, lambda: parse_country_page(page)),
        ("index_page", index, lambda: parse_index_page(index)),
    ):
        measured = rate(parse, args.seconds)
        baseline = rate(lambda doc=doc: LexborHTMLParser(doc).body.text(), args.seconds)  # type: ignore[union-attr,misc]
        figures[name] = {
            "pages_per_s": round(measured, 1),
            "baseline": round(baseline, 1),
            "ratio": round(measured / baseline, 3),
        }
        print(
            f"{name:<13} {measured:9.1f} pages/s   baseline (selectolax text) {baseline:9.1f}/s"
            f"   ratio {measured / baseline:.3f}"
        )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        json.dumps(
            {
                "throughput": figures["country_page"]["pages_per_s"],
                "baseline": figures["country_page"]["baseline"],
                "ratio": figures["country_page"]["ratio"],
                "index": figures["index_page"],
                "peak_rss_mb": round(peak, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
