"""Scrape a dispatcher's /metrics and read it with prometheus_client's own parser."""

from __future__ import annotations

import urllib.request
from collections import Counter

from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(url: str) -> Samples:
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = response.read().decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        assert family.name.startswith("saga_dispatch_"), family.name
        for sample in family.samples:
            samples[sample.name, frozenset(sample.labels.items())] = sample.value
    return samples


def series(samples: Samples, name: str, *keys: str) -> dict[tuple[str, ...], float]:
    """``name``'s samples keyed by the values of ``keys`` (summed over the other labels)."""
    out: Counter[tuple[str, ...]] = Counter()
    for (sample, labels), value in samples.items():
        if sample == name:
            got = dict(labels)
            out[tuple(got[k] for k in keys)] += value
    return dict(out)
