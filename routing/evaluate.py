"""Evaluate the router on labelled turns (``text,label`` with labels routine / high_stakes / human /
out_of_scope): what ``voxroute eval-router`` prints and the tests check.

Each row is routed as the first turn of a fresh conversation of the default tenant, on the voice
channel, in ``hi-IN`` when the text is in Devanagari and ``en-IN`` otherwise. ``escalated`` means
the route goes to the reasoning tier or to a human. The predicted label is ``human`` for a human
class, ``high_stakes`` when escalated, ``out_of_scope`` for that class, else ``routine``.
``routine_as_out_of_scope`` counts routine turns taken for out of scope (answered with the polite
redirect instead of an answer). ``decision_ms`` is the whole decision (rules, classifier, signals,
table), timed per row (wall clock); ``cpu_ms`` the CPU time of the same call (this thread's).

``metrics_by`` gives every figure per value of a column of the input (``voxroute eval-router --by
domain``): a domain, a language, a split.
"""

from __future__ import annotations

import csv
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from voxroute.routing.router import Router, is_devanagari

WARMUP_ROWS = 10


@dataclass(frozen=True, slots=True)
class Prediction:
    text: str
    label: str
    predicted_class: str
    predicted_label: str
    escalated: bool
    decision_ms: float
    cpu_ms: float = 0.0


def predict(router: Router, rows: list[tuple[str, str]], tenant: str | None = None) -> list[Prediction]:
    tenant = tenant or router.table.default_tenant
    for text, _ in rows[:WARMUP_ROWS]:  # first calls fill caches; they are timed again below
        router.conversation(tenant).decide(text, "en-IN")
    out = []
    for text, label in rows:
        language = "hi-IN" if is_devanagari(text) else "en-IN"
        conv = router.conversation(tenant)
        c0 = time.thread_time()
        t0 = time.perf_counter()
        route = conv.decide(text, language)
        ms = (time.perf_counter() - t0) * 1000
        cpu_ms = (time.thread_time() - c0) * 1000
        if route.stakes == "human":
            predicted = "human"
        elif route.escalated:
            predicted = "high_stakes"
        elif route.routing_class == "out_of_scope":
            predicted = "out_of_scope"
        else:
            predicted = "routine"
        out.append(Prediction(text, label, route.routing_class, predicted, route.escalated, ms, cpu_ms))
    return out


def _ratio(num: int, den: int) -> float | None:
    return round(num / den, 4) if den else None


def metrics(preds: list[Prediction]) -> dict:
    n = len(preds)
    high = [p for p in preds if p.label == "high_stakes"]
    flagged = [p for p in preds if p.predicted_label == "high_stakes"]
    human = [p for p in preds if p.label == "human"]
    routine = [p for p in preds if p.label == "routine"]
    oos = [p for p in preds if p.label == "out_of_scope"]
    ms = np.array([p.decision_ms for p in preds]) if preds else np.zeros(1)
    cpu = np.array([p.cpu_ms for p in preds]) if preds else np.zeros(1)
    return {
        "n": n,
        "accuracy": _ratio(sum(p.predicted_label == p.label for p in preds), n),
        "high_stakes_recall": _ratio(sum(p.escalated for p in high), len(high)),
        "high_stakes_precision": _ratio(sum(p.label == "high_stakes" for p in flagged), len(flagged)),
        "human_recall": _ratio(sum(p.predicted_label == "human" for p in human), len(human)),
        "escalation_rate": _ratio(sum(p.escalated for p in preds), n),
        "routine_escalated": _ratio(sum(p.escalated for p in routine), len(routine)),
        "out_of_scope_escalated": _ratio(sum(p.escalated for p in oos), len(oos)),
        # routine turns taken for out of scope: the caller gets the polite redirect, not an answer
        "routine_as_out_of_scope": _ratio(
            sum(p.predicted_label == "out_of_scope" for p in routine), len(routine)
        ),
        "decision_ms_p50": round(float(np.percentile(ms, 50)), 4),
        "decision_ms_p99": round(float(np.percentile(ms, 99)), 4),
        "cpu_ms_per_turn": round(float(cpu.mean()), 4),
    }


def metrics_by(preds: list[Prediction], values: list[str]) -> dict[str, dict]:
    """Every figure of ``metrics`` per value (one value per prediction), values in sorted order."""
    if len(values) != len(preds):
        raise ValueError(f"{len(values)} values for {len(preds)} predictions")
    groups: dict[str, list[Prediction]] = {}
    for p, v in zip(preds, values, strict=True):
        groups.setdefault(v, []).append(p)
    return {v: metrics(groups[v]) for v in sorted(groups)}


def read_column(path: str | Path, column: str) -> list[str]:
    """One column of a CSV, one value per row (empty cells as ''); a clear error if it is absent."""
    path = Path(path)
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        fields = reader.fieldnames or []
        if column not in fields:
            raise ValueError(f"{path}: no column {column!r} to group by (header is {fields!r})")
        return [(row.get(column) or "").strip() for row in reader]
