"""The routing table: tenants, model paths, routing classes and their targets.

The YAML ``routing:`` and ``tenants:`` sections are validated by these pydantic models (a bad
file fails at start naming the bad field) and resolved once, at load, into a flat table::

    (tenant, language group, channel, routing class) -> ClassRoute

so the per-turn decision is a dictionary lookup. A tenant's table gives, per language group
(``english``, ``indic``; which language codes fall in each is configurable) and channel (``voice``,
``chat``), a ``fast`` ladder (low-stakes classes) and a ``reasoning`` ladder (high-stakes and
human classes, and every turn after an escalation), plus per-class overrides.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Stakes = Literal["low", "high", "human"]
Channel = Literal["voice", "chat"]
CHANNELS: tuple[Channel, ...] = ("voice", "chat")
OnFailure = Literal["apologise", "handoff"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelPath(_Model):
    """A model on a provider, with its price and expected time to first token."""

    provider: str
    model: str
    tier: Literal["fast", "reasoning"] = "fast"
    price_in_per_mtok: float = Field(default=0.0, ge=0)
    price_out_per_mtok: float = Field(default=0.0, ge=0)
    expected_ttft_ms: int = Field(default=400, gt=0)


class ClassDef(_Model):
    """A routing class and its targets. ``budget_ms`` None: the channel's budget."""

    stakes: Stakes
    description: str = ""
    budget_ms: int | None = Field(default=None, gt=0)
    structured_extraction: bool = False  # the turn must yield fields (amount, date, order id)
    on_failure: OnFailure = "apologise"  # when every rung failed: apologise, or apologise and hand off
    downgrade: bool = True  # may fall back to the fast tier for speed when the reasoning tier fails
    step_down_after: int | None = Field(default=None, ge=1)  # routine turns before de-escalating
    bridge_then_escalate: bool = True  # the fast path acknowledges while the reasoning path answers
    ends_with_human: bool = False  # after the answer, the call goes to a person (e.g. regulated matters)
    guidance: str = ""  # an instruction for the answering model on this class's turns (Route.guidance)
    # Things callers say for this class: recognised by nearest neighbour, without retraining.
    examples: list[str] = Field(default_factory=list, max_length=200)

    @field_validator("examples")
    @classmethod
    def _examples(cls, v: list[str]) -> list[str]:
        for i, text in enumerate(v):
            if not text.strip() or len(text) > 500:
                raise ValueError(f"examples.{i}: an example is 1-500 characters of what a caller says")
        return v


BUILTIN_CLASSES: dict[str, ClassDef] = {
    "faq": ClassDef(stakes="low", description="questions about products, hours, how-to; greetings"),
    "order_tracking": ClassDef(stakes="low", description="where is my order / card / transfer"),
    "sales_qualification": ClassDef(stakes="low", description="new products, plans, limits, upgrades"),
    "document_support": ClassDef(stakes="low", description="documents, statements, identity how-to"),
    "out_of_scope": ClassDef(
        stakes="low",
        description="not about the business",
        guidance=(
            "The caller asked about something outside this business. Do not answer it: say politely, "
            "in one short sentence, that you can only help with this business's questions, and ask "
            "what you can help with."
        ),
    ),
    "booking_change": ClassDef(
        stakes="high", description="change or cancel a booking", structured_extraction=True
    ),
    "complaint": ClassDef(stakes="high", description="complaints, anger, repeated failure"),
    "billing_dispute": ClassDef(
        stakes="high",
        description="wrong, double or unrecognised charges, refunds",
        structured_extraction=True,
        on_failure="handoff",
    ),
    "regulated": ClassDef(
        stakes="high",
        description="fraud, lost or stolen card, blocked account, legal or medical matters",
        on_failure="handoff",
        downgrade=False,
    ),
    "human_request": ClassDef(
        stakes="human", description="the caller asks for a person", on_failure="handoff"
    ),
}

DEFAULT_LANGUAGE_GROUPS: dict[str, list[str]] = {
    "english": ["en-IN", "en-US", "en-GB", "en"],
    "indic": [
        "hi-IN", "bn-IN", "ta-IN", "te-IN", "kn-IN", "ml-IN", "mr-IN", "gu-IN", "pa-IN", "od-IN",
        "as-IN", "ur-IN", "ne-IN", "kok-IN", "ks-IN", "sd-IN", "sa-IN", "sat-IN", "mni-IN", "brx-IN",
        "mai-IN", "doi-IN",
    ],
}  # fmt: skip


class ClassOverride(_Model):
    """Per (language group, channel) changes to one class: its own ladder or targets."""

    ladder: list[str] | None = Field(default=None, min_length=1)
    budget_ms: int | None = Field(default=None, gt=0)
    structured_extraction: bool | None = None
    on_failure: OnFailure | None = None
    downgrade: bool | None = None
    step_down_after: int | None = Field(default=None, ge=1)


class ChannelTable(_Model):
    fast: list[str] = Field(min_length=1)  # ladder for low-stakes classes, best first
    reasoning: list[str] = Field(min_length=1)  # ladder for high-stakes and human classes
    classes: dict[str, ClassOverride] = Field(default_factory=dict)


class GroupTable(_Model):
    voice: ChannelTable
    chat: ChannelTable | None = None  # None: the voice table, with the chat budget


class Budgets(_Model):
    voice_ms: int = Field(default=1000, gt=0)
    chat_ms: int = Field(default=3000, gt=0)


class Rule(_Model):
    """A keyword/regex rule: a match decides the class, whatever the model says."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    routing_class: str = Field(alias="class")
    pattern: str
    name: str | None = None

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, v: str) -> str:
        try:
            re.compile(v)
        except re.error as e:
            raise ValueError(f"not a valid regular expression: {e}") from None
        return v

    @property
    def label(self) -> str:
        return self.name or self.pattern


class SignalConfig(_Model):
    """Signals beyond the words (see routing/router.py)."""

    repeat_failures: int = Field(default=2, ge=1)  # unresolved turns in a row that escalate
    low_stt_confidence: float = Field(default=0.6, ge=0, le=1)
    money_threshold_factor: float = Field(default=0.6, gt=0, le=1)  # money named: the threshold times this
    low_confidence_factor: float = Field(default=0.6, gt=0, le=1)
    anger: bool = True
    closings: bool = True  # a turn that only thanks, defers or manages the talk ("say again") stays routine
    context_min_confidence: float = Field(default=0.55, ge=0, le=1)  # below: a follow-up keeps its class
    # a tenant class's examples decide when the nearest is at least this similar (cosine)
    examples_min_similarity: float = Field(default=0.5, gt=0, le=1)


class TenantConfig(_Model):
    numbers: list[str] = Field(default_factory=list)  # the tenant's phone numbers (E.164)
    languages: list[str] = Field(default_factory=lambda: ["en-IN"])
    budgets: Budgets = Budgets()
    models: dict[str, ModelPath] = Field(default_factory=dict)  # added to (or overriding) the shared paths
    classes: dict[str, ClassDef] = Field(default_factory=dict)  # the tenant's own classes or changes
    rules: list[Rule] = Field(default_factory=list)  # tried before the shared rules
    table: dict[str, GroupTable]  # language group -> channel tables
    human_queue: str | None = Field(default=None, pattern=r"^(\+[1-9]\d{6,14}|sips?:\S+)$")  # E.164 or sip:
    caller_id: str | None = Field(default=None, pattern=r"^\+[1-9]\d{6,14}$")  # shown to the human
    # the tenant's own escalation threshold, e.g. from its labelled turns (eval-router --calibrate)
    high_threshold: float | None = Field(default=None, gt=0, lt=1)  # None: routing.high_threshold


class RoutingConfig(_Model):
    language_groups: dict[str, list[str]] = Field(default_factory=lambda: dict(DEFAULT_LANGUAGE_GROUPS))
    default_group: str = "english"
    classes: dict[str, ClassDef] = Field(default_factory=dict)  # added to (or overriding) the built-ins
    rules: list[Rule] = Field(default_factory=list)
    signals: SignalConfig = SignalConfig()
    classifier: str | None = None  # path of the classifier artifact; None: the shipped model
    high_threshold: float | None = Field(default=None, gt=0, lt=1)  # None: the model's tuned threshold
    hedge_max_share: float = Field(default=0.10, ge=0, le=1)  # at most this share of requests hedged
    # When many calls' first tokens are late together, at most this many hedges start at once
    # beyond the share, so a burst cannot double the load on slow providers.
    hedge_burst: float = Field(default=10.0, ge=1)  # at most this many unused hedges are saved up
    cooldown_s: float = Field(default=10.0, gt=0)
    failures_to_cooldown: int = Field(default=2, ge=1)  # consecutive failures that cool a path down

    @model_validator(mode="after")
    def _groups(self) -> RoutingConfig:
        if self.default_group not in self.language_groups:
            raise ValueError(f"default_group: {self.default_group!r} is not in language_groups")
        seen: dict[str, str] = {}
        for group, codes in self.language_groups.items():
            for code in codes:
                if code in seen:
                    raise ValueError(f"language_groups.{group}: {code} is already in {seen[code]}")
                seen[code] = group
        return self


@dataclass(frozen=True, slots=True)
class ClassRoute:
    """One resolved cell of the routing table."""

    tenant: str
    group: str
    channel: str
    routing_class: str
    stakes: str
    ladder: tuple[str, ...]  # model path names, tried in order
    escalated_ladder: tuple[str, ...]  # the ladder once the conversation is escalated
    fast_ladder: tuple[str, ...]  # the fast tier of this group and channel (bridges, downgrades)
    budget_ms: int
    structured_extraction: bool
    on_failure: str
    downgrade: bool
    step_down_after: int | None
    bridge_then_escalate: bool
    ends_with_human: bool = False
    guidance: str = ""

    def as_dict(self) -> dict:
        return {
            "class": self.routing_class,
            "stakes": self.stakes,
            "ladder": list(self.ladder),
            "escalated_ladder": list(self.escalated_ladder),
            "budget_ms": self.budget_ms,
            "structured_extraction": self.structured_extraction,
            "on_failure": self.on_failure,
            "downgrade": self.downgrade,
            "step_down_after": self.step_down_after,
        }


class RoutingTable:
    """The resolved table plus what the router needs to look things up fast."""

    def __init__(
        self,
        routing: RoutingConfig,
        tenants: Mapping[str, TenantConfig],
        shared_models: dict[str, ModelPath],
        default_tenant: str,
    ) -> None:
        self.routing = routing
        self.tenants = tenants
        self.default_tenant = default_tenant
        self.group_of: dict[str, str] = {
            code: group for group, codes in routing.language_groups.items() for code in codes
        }
        self.models: dict[str, dict[str, ModelPath]] = {}
        self.classes: dict[str, dict[str, ClassDef]] = {}
        self.rules: dict[str, list[tuple[re.Pattern[str], Rule]]] = {}
        self.cells: dict[tuple[str, str, str, str], ClassRoute] = {}
        self.tenant_of_number: dict[str, str] = {}
        for name, tenant in tenants.items():
            self.models[name] = {**shared_models, **tenant.models}
            self.classes[name] = {**BUILTIN_CLASSES, **routing.classes, **tenant.classes}
            self.rules[name] = [
                (re.compile(r.pattern, re.IGNORECASE), r) for r in [*tenant.rules, *routing.rules]
            ]
            for number in tenant.numbers:
                self.tenant_of_number[_digits(number)] = name
            for group, gtable in tenant.table.items():
                for channel in CHANNELS:
                    ctable = gtable.voice if channel == "voice" or gtable.chat is None else gtable.chat
                    for cls, cdef in self.classes[name].items():
                        self.cells[(name, group, channel, cls)] = _resolve(
                            name, group, channel, cls, cdef, ctable, tenant.budgets
                        )
        self.policy_version = self._policy_version()

    def _policy_version(self) -> str:
        """A short hash of what routing does (every resolved cell and model path): the call log
        stores it with each call, so a report can compare outcomes before and after a change."""
        cells = {"/".join(key): route.as_dict() for key, route in sorted(self.cells.items())}
        models = {
            tenant: {name: path.model_dump(mode="json") for name, path in sorted(paths.items())}
            for tenant, paths in sorted(self.models.items())
        }
        blob = json.dumps({"cells": cells, "models": models}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    def tenant_for_number(self, number: str) -> str | None:
        return self.tenant_of_number.get(_digits(number))

    def tenant(self, name: str) -> str:
        """A known tenant name: ``name`` if configured, else the default tenant."""
        return name if name in self.tenants else self.default_tenant

    def group(self, tenant: str, language: str) -> str:
        group = self.group_of.get(language) or self.group_of.get(language.split("-")[0])
        table = self.tenants[tenant].table
        if group in table:
            return group
        return self.routing.default_group if self.routing.default_group in table else next(iter(table))

    def cell(self, tenant: str, group: str, channel: str, routing_class: str) -> ClassRoute:
        return self.cells[(tenant, group, channel, routing_class)]

    def stakes(self, tenant: str, routing_class: str) -> str:
        cdef = self.classes[tenant].get(routing_class)
        return cdef.stakes if cdef else "low"

    def rows(self, tenant: str) -> list[ClassRoute]:
        return [c for k, c in self.cells.items() if k[0] == tenant]


def _digits(number: str) -> str:
    return "".join(ch for ch in number if ch.isdigit())


def _resolve(
    tenant: str,
    group: str,
    channel: str,
    cls: str,
    cdef: ClassDef,
    table: ChannelTable,
    budgets: Budgets,
) -> ClassRoute:
    o = table.classes.get(cls, ClassOverride())
    tier_ladder = table.fast if cdef.stakes == "low" else table.reasoning
    ladder = tuple(o.ladder or tier_ladder)
    # Once escalated, a low-stakes class is answered by the reasoning ladder too (sticky escalation).
    escalated = ladder if cdef.stakes != "low" else tuple(table.reasoning)
    downgrade = cdef.downgrade if o.downgrade is None else o.downgrade
    if downgrade and cdef.stakes != "low":
        # The last rungs: the fast tier, for speed, when the reasoning paths fail.
        ladder = ladder + tuple(p for p in table.fast if p not in ladder)
    if downgrade:
        escalated = escalated + tuple(p for p in table.fast if p not in escalated)
    channel_budget = budgets.voice_ms if channel == "voice" else budgets.chat_ms
    return ClassRoute(
        tenant=tenant,
        group=group,
        channel=channel,
        routing_class=cls,
        stakes=cdef.stakes,
        ladder=ladder,
        escalated_ladder=escalated,
        fast_ladder=tuple(table.fast),
        budget_ms=o.budget_ms or cdef.budget_ms or channel_budget,
        structured_extraction=(
            cdef.structured_extraction if o.structured_extraction is None else o.structured_extraction
        ),
        on_failure=o.on_failure or cdef.on_failure,
        downgrade=downgrade,
        step_down_after=o.step_down_after or cdef.step_down_after,
        bridge_then_escalate=cdef.bridge_then_escalate,
        ends_with_human=cdef.ends_with_human,
        guidance=cdef.guidance,
    )


def check_references(
    routing: RoutingConfig, tenants: Mapping[str, TenantConfig], shared_models: dict[str, ModelPath]
) -> list[str]:
    """Every dangling name in the routing sections, as dotted paths with a message."""
    problems: list[str] = []
    for name, tenant in tenants.items():
        models = {**shared_models, **tenant.models}
        classes = {**BUILTIN_CLASSES, **routing.classes, **tenant.classes}
        where = f"tenants.{name}"
        if not tenant.table:
            problems.append(f"{where}.table: a tenant needs at least one language group")
        for group, gtable in tenant.table.items():
            if group not in routing.language_groups:
                problems.append(
                    f"{where}.table.{group}: unknown language group (routing.language_groups has "
                    f"{', '.join(routing.language_groups)})"
                )
            for channel in CHANNELS:
                ctable = getattr(gtable, channel)
                if ctable is None:
                    continue
                base = f"{where}.table.{group}.{channel}"
                for ladder_name in ("fast", "reasoning"):
                    for i, path in enumerate(getattr(ctable, ladder_name)):
                        if path not in models:
                            problems.append(f"{base}.{ladder_name}.{i}: unknown model path {path!r}")
                for cls, override in ctable.classes.items():
                    if cls not in classes:
                        problems.append(f"{base}.classes.{cls}: unknown routing class")
                    for i, path in enumerate(override.ladder or []):
                        if path not in models:
                            problems.append(f"{base}.classes.{cls}.ladder.{i}: unknown model path {path!r}")
        for i, rule in enumerate(tenant.rules):
            if rule.routing_class not in classes:
                problems.append(f"{where}.rules.{i}.class: unknown routing class {rule.routing_class!r}")
    all_classes = {**BUILTIN_CLASSES, **routing.classes}
    for tenant in tenants.values():
        all_classes.update(tenant.classes)
    for i, rule in enumerate(routing.rules):
        if rule.routing_class not in all_classes:
            problems.append(f"routing.rules.{i}.class: unknown routing class {rule.routing_class!r}")
    return problems
