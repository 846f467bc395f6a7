"""The handoff summary: what a human needs to know before taking over a call (issue 5).

A summary is produced two ways. The reasoning model is asked for it with structured output (a JSON
schema in the request, :func:`~agent.handoff.llm.llm_summary_request`); if that model fails, answers something that is
not the schema, or is slower than ``timeout_s``, :func:`deterministic_summary` builds one from what
the runtime already knows: the router's decisions, entities found by the rules below, fallbacks and
outcomes. :func:`summarise` does both. The deterministic path alone must be useful, so entity
extraction is careful about how callers really say things on the phone:

- spoken numbers in English and Hindi, up to lakhs and crores ("two thousand four hundred",
  "twenty four hundred", "बारह सौ", "डेढ़ लाख"), digit strings read one by one ("A one seven four
  five", "चार पाँच दो एक"), digits with separators ("Rs 1,200", "₹2,400", "$35");
- dates as said ("the twelfth of March", "5th April", "March 12", "from the fifth of April to the
  eighth"), normalised to ``"12 March"`` (day, English month name; no year: callers rarely say one),
  and relative dates kept as words in English ("next Friday", "last week"; "पिछले हफ्ते" -> "last
  week");
- amounts as ``"<number> <ISO currency>"``: ``"2400 INR"``, ``"35 USD"``, ``"35.50 USD"``.

The extraction and both summaries are sans-I/O except :func:`summarise`, which only awaits the
provider stream; :mod:`.flow` is the I/O of a call's handoff. Nothing here raises on bad input: odd
transcripts give fewer entities, never an error.

Webhook bodies are signed and delivered by :mod:`voxroute.agent.webhook`.

The package: :mod:`.summary` (the summary's shape), :mod:`.entities` (entity extraction),
:mod:`.deterministic` (the deterministic summary and the whisper), :mod:`.llm` (the model's summary
and :func:`summarise`), :mod:`.flow` (a call's handoff: summary, webhook, transfer).
"""

from voxroute.agent.handoff.deterministic import deterministic_summary, whisper_sentence
from voxroute.agent.handoff.entities import extract_entities, parse_spoken_number, spoken_digits
from voxroute.agent.handoff.llm import llm_summary_request, parse_llm_summary, summarise, summary_json_schema
from voxroute.agent.handoff.summary import ENTITY_KINDS, Entity, EntityKind, HandoffSummary

__all__ = [
    "ENTITY_KINDS",
    "Entity",
    "EntityKind",
    "HandoffSummary",
    "deterministic_summary",
    "extract_entities",
    "llm_summary_request",
    "parse_llm_summary",
    "parse_spoken_number",
    "spoken_digits",
    "summarise",
    "summary_json_schema",
    "whisper_sentence",
]
