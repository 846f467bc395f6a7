"""The router's decision for one turn, and the placeholder router of the call spine.

The real router (routing classes, stakes classifier, sticky escalation) replaces
``SingleModelRouter``; the session only depends on ``Route`` and ``Router.route``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Route:
    routing_class: str  # "faq", "billing_dispute", ... ("unclassified" until the router exists)
    tier: str  # "fast" or "reasoning"
    model: str  # the first model path's model id
    paths: tuple[str, ...]  # model path names to try, in order (the fallback ladder)
    reason: str  # why: which rule, score or signal decided

    def as_dict(self) -> dict:
        d = asdict(self)
        d["class"] = d.pop("routing_class")
        d["paths"] = list(self.paths)
        return d


class Router(Protocol):
    def route(self, transcript: str, history: list[dict], language: str) -> Route: ...


class SingleModelRouter:
    """Every turn takes the same ladder: the placeholder until the latency-first router lands."""

    def __init__(self, paths: list[str], model: str, tier: str = "fast") -> None:
        self._route = Route(
            "unclassified", tier, model, tuple(paths), "placeholder: one model for every turn"
        )

    def route(self, transcript: str, history: list[dict], language: str) -> Route:
        return self._route
