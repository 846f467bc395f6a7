"""voxroute for Pipecat pipelines (the ``pipecat`` extra: ``pip install 'voxroute[pipecat]'``).

- :class:`RoutedLLMService`: a Pipecat LLM service that routes each turn with voxroute's router and
  answers through its fallback ladder (retries, hedges bounded by the turn's budget, cooldowns,
  continuation after a mid-stream error); Pipecat function calling passes through; the route and
  tier go out in a ``MetricsFrame`` (:class:`RouteMetricsData`).
- :class:`TurnBudgetProcessor`: the turn's deadline from the user's end of speech: the cached bridge
  if no bot audio has started by the budget minus the bridge lead, the apology at the hard cap.
- :class:`TwilioMarkSerializer` and its :class:`HeardTextProcessor`: Twilio Media Streams through
  voxroute's sans-I/O codec, a mark after each spoken chunk, and a context that keeps only what the
  caller heard when an interruption clears Twilio's buffer.
"""

from __future__ import annotations

try:
    import pipecat  # noqa: F401
except ImportError as exc:  # pragma: no cover - the message is the point
    raise ImportError(
        "voxroute.integrations.pipecat needs pipecat-ai: pip install 'voxroute[pipecat]'"
    ) from exc

from voxroute.integrations.pipecat.budget import Phrase, TurnBudgetProcessor, TurnDeadline
from voxroute.integrations.pipecat.llm import RoutedLLMService, RouteMetricsData
from voxroute.integrations.pipecat.twilio import HeardTextProcessor, MarkEchoFrame, TwilioMarkSerializer

__all__ = [
    "HeardTextProcessor",
    "MarkEchoFrame",
    "Phrase",
    "RouteMetricsData",
    "RoutedLLMService",
    "TurnBudgetProcessor",
    "TurnDeadline",
    "TwilioMarkSerializer",
]
