"""Tenant classes described by example utterances, recognised by nearest neighbour.

A tenant's config may give a class ``examples:`` (a handful of things callers say); the router
recognises such a class without retraining: each turn is compared with every example by cosine
similarity of TF-IDF vectors (words and character 3-5-grams, the classifier's normalisation),
and the nearest example's class is proposed when its similarity reaches the configured minimum.

Built once per tenant at start; a query is a few dict look-ups per feature through an inverted
index, linear in the (capped) text length.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from voxroute.routing.classifier import tokens

# Text past this many characters is not compared: a caller's turn that long is not one of the short
# phrasings a tenant lists, and the cap keeps the look-up's cost bounded.
QUERY_MAX_CHARS = 500
_NGRAMS = (3, 4, 5)


def features(text: str) -> dict[str, float]:
    """Feature counts of one text: words (weighted 2) and character 3-5-grams inside ' word '."""
    out: dict[str, float] = {}
    for w in tokens(text[:QUERY_MAX_CHARS]):
        out["w " + w] = out.get("w " + w, 0.0) + 2.0
        padded = f" {w} "
        for n in _NGRAMS:
            for i in range(len(padded) - n + 1):
                f = "c" + padded[i : i + n]
                out[f] = out.get(f, 0.0) + 1.0
    return out


@dataclass(frozen=True, slots=True)
class Match:
    routing_class: str
    example: str
    similarity: float


class ExampleIndex:
    """Nearest-example look-up over one tenant's classes' examples."""

    def __init__(self, examples: dict[str, list[str]]) -> None:
        self._items: list[tuple[str, str]] = [
            (cls, text) for cls, texts in sorted(examples.items()) for text in texts if tokens(text)
        ]
        raw = [features(text) for _, text in self._items]
        n = len(raw)
        df: dict[str, int] = {}
        for vec in raw:
            for f in vec:
                df[f] = df.get(f, 0) + 1
        # Smoothed IDF over the examples: words every example shares weigh little.
        self._idf = {f: math.log(1.0 + (n + 1) / (d + 1)) for f, d in df.items()}
        self._postings: dict[str, list[tuple[int, float]]] = {}
        for i, vec in enumerate(raw):
            weighted = {f: v * self._idf[f] for f, v in vec.items()}
            norm = math.sqrt(sum(v * v for v in weighted.values())) or 1.0
            for f, v in weighted.items():
                self._postings.setdefault(f, []).append((i, v / norm))

    def __len__(self) -> int:
        return len(self._items)

    def nearest(self, text: str) -> Match | None:
        """The most similar example (cosine of TF-IDF vectors), or None with no shared feature."""
        if not self._items:
            return None
        vec = features(text)
        # Features no example has add to the query's norm only (they make it less similar).
        weighted = {f: v * self._idf.get(f, self._unseen_idf) for f, v in vec.items()}
        norm = math.sqrt(sum(v * v for v in weighted.values()))
        if norm == 0.0:
            return None
        dots: dict[int, float] = {}
        for f, v in weighted.items():
            for i, w in self._postings.get(f, ()):
                dots[i] = dots.get(i, 0.0) + v * w
        if not dots:
            return None
        best = max(dots, key=lambda i: (dots[i], -i))
        cls, example = self._items[best]
        return Match(cls, example, dots[best] / norm)

    @property
    def _unseen_idf(self) -> float:
        n = len(self._items)
        return math.log(1.0 + (n + 1))
