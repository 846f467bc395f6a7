"""The router's decision for one turn: what the session needs to run it and what the log keeps."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Route:
    routing_class: str  # "faq", "billing_dispute", ...
    tier: str  # "fast" or "reasoning": the tier of the first rung
    model: str  # the first rung's model id
    paths: tuple[str, ...]  # model path names to try, in order (the fallback ladder)
    reason: str  # why: which rule, score or signal decided
    stakes: str = "low"  # low, high, human
    escalated: bool = False  # this turn is answered by the reasoning tier or goes to a human
    handoff: bool = False  # the caller asked for a person
    on_failure: str = "apologise"  # when every rung fails: "apologise" or "handoff"
    ends_with_human: bool = False  # after this turn's answer the call goes to a person
    budget_ms: int = 1000
    structured_extraction: bool = False
    bridge_first: bool = False  # the fast path acknowledges first while the reasoning path answers
    fast_paths: tuple[str, ...] = ()  # the fast tier of this table cell (for the acknowledgement)
    tenant: str = "default"
    group: str = "english"
    channel: str = "voice"
    decision_ms: float = 0.0
    signals: tuple[str, ...] = field(default_factory=tuple)
    guidance: str = ""  # the class's instruction for the answering model (out of scope: a polite redirect)

    def as_dict(self) -> dict:
        return {
            "class": self.routing_class,
            "stakes": self.stakes,
            "tier": self.tier,
            "model": self.model,
            "paths": list(self.paths),
            "escalated": self.escalated,
            "handoff": self.handoff,
            "on_failure": self.on_failure,
            "ends_with_human": self.ends_with_human,
            "bridge_first": self.bridge_first,
            "budget_ms": self.budget_ms,
            "group": self.group,
            "channel": self.channel,
            "tenant": self.tenant,
            "signals": list(self.signals),
            "decision_ms": round(self.decision_ms, 3),
            "reason": self.reason,
        }
