"""The tools the agent's LLM may call.

Built in (this module): hand the call to a person, mark the call resolved. The runtime acts on
these itself; no result goes back to the model, because a transfer ends the agent's part of the
call and ``mark_resolved`` comes with the spoken closing.

A tenant's business tools (``spec.py``: HTTP and Python tools from the config; ``run.py``: the
:class:`~agent.tools.run.ToolRunner` that executes them) return results to the model.

The schemas follow the OpenAI ``tools`` format (``docs/reference/openai_compatible.md``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

TRANSFER_TO_HUMAN = "transfer_to_human"
MARK_RESOLVED = "mark_resolved"
BUILTIN_TOOLS = frozenset({TRANSFER_TO_HUMAN, MARK_RESOLVED})


def _function(name: str, description: str, properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": description,
            "parameters": {
                "type": "object",
                "properties": properties,
                "required": required,
                "additionalProperties": False,
            },
        },
    }


TRANSFER_TOOL = _function(
    TRANSFER_TO_HUMAN,
    "Hand the call to a human colleague, who receives a summary of the conversation. Use it when the "
    "caller asks for a person, or when the matter needs one (a complaint you cannot settle, a "
    "regulated question, an action you are not allowed to take).",
    {"reason": {"type": "string", "description": "One sentence: why a person should take the call."}},
    ["reason"],
)

RESOLVED_TOOL = _function(
    MARK_RESOLVED,
    "Record that the caller's request is fully settled (they confirmed it, or said that is all). "
    "Say your closing words as usual in the same reply.",
    {"summary": {"type": "string", "description": "What was resolved, in a few words."}},
    ["summary"],
)


def agent_tools(can_transfer: bool) -> list[dict[str, Any]]:
    """The tools offered on an answer: the transfer only where a human queue exists."""
    return [TRANSFER_TOOL, RESOLVED_TOOL] if can_transfer else [RESOLVED_TOOL]


@dataclass(frozen=True, slots=True)
class ToolRequest:
    """What the model asked for, validated: ``name`` is one of ours; ``argument`` is its text."""

    name: str
    argument: str


def read_tool_calls(calls: Any) -> tuple[list[ToolRequest], list[str]]:
    """The built-in tool calls from a model's ``tool_calls`` (objects with ``name`` and ``arguments``),
    and a problem line for each built-in call that is malformed (logged by the caller, never raised).
    Other names are the business tools' (the tool runner answers them, unknown ones included)."""
    wanted: list[ToolRequest] = []
    problems: list[str] = []
    for call in calls or ():
        name = getattr(call, "name", None)
        args = getattr(call, "arguments", None)
        if name not in BUILTIN_TOOLS:
            continue
        key = "reason" if name == TRANSFER_TO_HUMAN else "summary"
        value = args.get(key) if isinstance(args, dict) else None
        if not isinstance(value, str):
            problems.append(f"{name}: argument {key!r} missing or not text")
            value = ""
        wanted.append(ToolRequest(name, value.strip()[:300]))
    return wanted, problems
