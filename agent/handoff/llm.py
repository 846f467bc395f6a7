"""The reasoning model's summary (structured output), and :func:`summarise`, which falls back to the deterministic one."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from typing import Any, Protocol, runtime_checkable

from pydantic import ValidationError

from voxroute.agent.calllog.redact import mask_number, redact, redact_json, redact_turns_async
from voxroute.agent.handoff.deterministic import as_text, deterministic_summary
from voxroute.agent.handoff.summary import ENTITY_KINDS, HandoffSummary, SummaryBody
from voxroute.agent.providers.base import LLMProvider, LLMRequest, LLMToken, ProviderError
from voxroute.routing.route import Route
from voxroute.routing.table import BUILTIN_CLASSES

log = logging.getLogger("voxroute.handoff")


# ---------------------------------------------------------------- the model's summary


def summary_json_schema() -> dict[str, Any]:
    """The JSON schema of the fields the model must return (``HandoffSummary`` without ``source``),
    closed (``additionalProperties: false``, every property required) as strict structured output wants."""
    schema = SummaryBody.model_json_schema()

    def close(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("type") == "object" and "properties" in node:
                node["additionalProperties"] = False
                node["required"] = list(node["properties"])
            for v in node.values():
                close(v)
        elif isinstance(node, list):
            for v in node:
                close(v)

    close(schema)
    return schema


def response_format() -> dict[str, Any]:
    """OpenAI ``response_format`` asking for the handoff summary as JSON."""
    return {
        "type": "json_schema",
        "json_schema": {"name": "handoff_summary", "strict": True, "schema": summary_json_schema()},
    }


_SYSTEM = (
    "You summarise a phone call for the human colleague who takes it over now. Answer with one JSON "
    "object that follows the schema, nothing else. reason: one sentence on why the caller called. "
    "routing_class: the topic's class, one of {classes}. entities: every order or booking reference, "
    "amount (value like '2400 INR'), date (value like '12 March' or 'next Friday'), card or account last "
    "four digits, name and phone number the caller gave, each with the turn index it came from; kinds: "
    "{kinds}. tone: calm, frustrated or angry. urgency: high when money, anger, failures or a regulated "
    "matter are involved, else low. tried: short items on what the agent already did (turns answered, "
    "failures, transfers asked for). next_action: one sentence on what the human should do. Write in "
    "English even when the caller spoke {language}."
)


def _conversation_text(turns: list[dict[str, Any]]) -> str:
    lines = []
    for pos, t in enumerate(turns or []):
        if not isinstance(t, dict):
            continue
        idx = t.get("index", pos)
        route = Route.from_dict(t.get("route"))
        said = as_text(t.get("transcript"))
        if t.get("kind") == "dtmf":
            said = f"[keypad] {said}"
        meta = [f"class={route.routing_class}"] if route else []
        if t.get("outcome") and t.get("outcome") != "answered":
            meta.append(f"outcome={t.get('outcome')}")
        for fb in t.get("fallbacks") or []:
            if isinstance(fb, dict):
                meta.append(f"failed {fb.get('provider')}/{fb.get('model', '')}: {fb.get('kind')}")
        lines.append(f"turn {idx} caller: {said[:500]}" + (f"  ({'; '.join(meta)})" if meta else ""))
        reply = as_text(t.get("heard")) or as_text(t.get("reply"))
        if reply:
            lines.append(
                f"turn {idx} agent: {reply[:500]}" + (" [interrupted]" if t.get("interrupted") else "")
            )
    return "\n".join(lines)


def llm_summary_request(
    turns: list[dict[str, Any]],
    call_language: str,
    model: str,
    *,
    max_tokens: int = 600,
    tag: str | None = None,
) -> LLMRequest:
    """The request asking ``model`` for the summary with structured output."""
    classes = ", ".join(BUILTIN_CLASSES)
    system = _SYSTEM.format(classes=classes, kinds=", ".join(ENTITY_KINDS), language=call_language)
    messages = [
        {"role": "system", "content": system},
        {"role": "user", "content": "The call so far:\n" + _conversation_text(turns)},
    ]
    return LLMRequest(
        model=model,
        messages=messages,
        max_tokens=max_tokens,
        temperature=0.0,
        tag=tag,
        response_format=response_format(),
    )


def parse_llm_summary(text: str) -> HandoffSummary:
    """Validate the model's answer. Raises ValueError naming what is wrong (not JSON, a missing or bad
    field). Tolerates a Markdown code fence around the object."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError("the model returned no text")
    body = text.strip()
    fence = re.fullmatch(r"```(?:json)?\s*(.*?)\s*```", body, re.DOTALL)
    if fence:
        body = fence.group(1)
    try:
        data = json.loads(body)
    except json.JSONDecodeError as e:
        raise ValueError(f"the summary is not JSON ({e.msg} at char {e.pos}): {body[:60]!r}") from None
    if not isinstance(data, dict):
        raise ValueError(f"the summary is not a JSON object but {type(data).__name__}")
    data.pop("source", None)
    try:
        fields = SummaryBody.model_validate(data)
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(root)'}: {err['msg']}" for err in e.errors()[:5]
        )
        raise ValueError(f"the summary does not match the schema: {problems}") from None
    return HandoffSummary(**fields.model_dump(), source="llm")


@runtime_checkable
class _Closeable(Protocol):
    """A stream that can be closed early (an async generator): ``isinstance`` checks for ``aclose``."""

    async def aclose(self) -> None: ...


async def _collect(llm: LLMProvider, request: LLMRequest) -> str:
    stream = llm.stream(request)
    parts: list[str] = []
    closing = (
        contextlib.aclosing(stream) if isinstance(stream, _Closeable) else contextlib.nullcontext(stream)
    )
    async with closing as events:
        async for ev in events:
            if isinstance(ev, LLMToken):
                parts.append(ev.text)
    return "".join(parts)


async def summarise(
    turns: list[dict[str, Any]],
    call_language: str,
    llm: LLMProvider | None,
    model: str | None,
    timeout_s: float = 2.0,
    *,
    tag: str | None = None,
) -> HandoffSummary:
    """The model's summary if it comes, valid, within ``timeout_s``; else the deterministic one (with a
    log line saying why). Never raises (cancellation excepted). No card, phone number or e-mail address
    reaches the summary (nor its webhook): the turns are redacted as the call log stores them (a number
    split over turns too) before the model or the rules see them, and the summary is redacted again."""
    redacted = await redact_turns_async(turns)  # a long call: in a thread
    summary = await _summarise(redacted, call_language, llm, model, timeout_s, tag=tag)
    data = summary.model_dump(mode="json")
    entities = [
        {**e, "value": (mask_number(e["value"]) or "[phone]") if e["kind"] == "phone" else redact(e["value"])}
        for e in data["entities"]
    ]
    return HandoffSummary.model_validate({**redact_json(data), "entities": entities})


async def _summarise(
    turns: list[dict[str, Any]],
    call_language: str,
    llm: LLMProvider | None,
    model: str | None,
    timeout_s: float,
    *,
    tag: str | None,
) -> HandoffSummary:
    if llm is None or not model:
        log.info("handoff summary: no reasoning model configured; deterministic summary")
        return deterministic_summary(turns, call_language)
    name = getattr(llm, "name", "llm")
    try:
        request = llm_summary_request(turns, call_language, model, tag=tag)
        async with asyncio.timeout(timeout_s):
            text = await _collect(llm, request)
        summary = parse_llm_summary(text)
        log.info("handoff summary from %s/%s", name, model)
        return summary
    except TimeoutError:
        why = f"{name}/{model} gave no summary within {timeout_s:.3g} s"
    except ProviderError as e:
        why = f"{name}/{model} failed: {e.kind}: {e.message[:200]}"
    except ValueError as e:
        why = f"{name}/{model} answered an invalid summary: {str(e)[:200]}"
    except Exception as e:  # a bug on this path must not cost the caller the transfer
        log.exception("handoff summary via %s/%s failed unexpectedly", name, model)
        why = f"{name}/{model}: unexpected {e!r:.200}"
    log.warning("handoff summary: %s; using the deterministic summary", why)
    return deterministic_summary(turns, call_language)
