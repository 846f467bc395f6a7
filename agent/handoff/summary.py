"""The handoff summary's shape: what a human needs to know before taking over a call."""

from __future__ import annotations

import logging
from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

log = logging.getLogger("voxroute.handoff")


EntityKind = Literal[
    "order_ref", "booking_ref", "amount", "date", "card_last4", "account_last4", "name", "phone"
]
ENTITY_KINDS: tuple[str, ...] = get_args(EntityKind)


# ---------------------------------------------------------------- the summary model


class Entity(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: EntityKind
    value: str = Field(min_length=1, max_length=120)
    turn: int = Field(ge=0)


class SummaryBody(BaseModel):
    """The fields the model is asked for (the JSON schema of the request); ``source`` is ours."""

    model_config = ConfigDict(extra="forbid")

    reason: str = Field(min_length=1, max_length=400, description="why the caller called, one sentence")
    routing_class: str = Field(min_length=1, max_length=64, description="the routing class of the topic")
    entities: list[Entity] = Field(default_factory=list, max_length=50)
    tone: Literal["calm", "frustrated", "angry"]
    urgency: Literal["low", "high"]
    tried: list[str] = Field(default_factory=list, max_length=20, description="what the agent already tried")
    next_action: str = Field(
        min_length=1, max_length=400, description="what the human should do, one sentence"
    )


class HandoffSummary(SummaryBody):
    """The handoff summary (JSON keys as in issue 5, plus ``source``: who wrote it)."""

    source: Literal["llm", "deterministic"] = "deterministic"
