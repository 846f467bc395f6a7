"""The router's decision for one turn: what the session needs to run it and what the log keeps."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

UNROUTED = "none"  # the tier of a turn the router did not decide (the greeting, nothing heard)


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

    @classmethod
    def unrouted(cls, routing_class: str, reason: str) -> Route:
        """A turn the router did not decide: the agent's greeting, a turn with nothing heard."""
        return cls(routing_class=routing_class, tier=UNROUTED, model="", paths=(), reason=reason)

    @classmethod
    def from_dict(cls, raw: Any) -> Route | None:
        """A route read back from a logged turn (the call log, a replay's JSON, an earlier leg): the one
        place that reads :meth:`as_dict`'s shape. Lenient, as stored JSON may be old or hand-made: a
        missing or mistyped field takes its default, except ``stakes``, which is ``""`` when the log
        does not say (the reader decides from the class). None when there is no class to read."""
        if not isinstance(raw, dict) or not isinstance(raw.get("class"), str) or not raw["class"]:
            return None

        def text(key: str, default: str = "") -> str:
            value = raw.get(key)
            return value if isinstance(value, str) else default

        def texts(key: str) -> tuple[str, ...]:
            value = raw.get(key)
            return tuple(v for v in value if isinstance(v, str)) if isinstance(value, list) else ()

        def flag(key: str) -> bool:
            return raw.get(key) is True

        budget, decision = raw.get("budget_ms"), raw.get("decision_ms")
        return cls(
            routing_class=raw["class"],
            tier=text("tier", UNROUTED),
            model=text("model"),
            paths=texts("paths"),
            reason=text("reason"),
            stakes=text("stakes"),
            escalated=flag("escalated"),
            handoff=flag("handoff"),
            on_failure=text("on_failure", "apologise"),
            ends_with_human=flag("ends_with_human"),
            budget_ms=budget if isinstance(budget, int) and not isinstance(budget, bool) else 1000,
            bridge_first=flag("bridge_first"),
            tenant=text("tenant", "default"),
            group=text("group", "english"),
            channel=text("channel", "voice"),
            decision_ms=float(decision) if isinstance(decision, int | float) else 0.0,
            signals=texts("signals"),
        )

    def as_dict(self) -> dict[str, Any]:
        """The logged shape (turn log, call log, replay JSON); an unrouted turn's is the short one."""
        if self.tier == UNROUTED:
            return {
                "class": self.routing_class,
                "tier": UNROUTED,
                "model": None,
                "escalated": self.escalated,
                "reason": self.reason,
            }
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
