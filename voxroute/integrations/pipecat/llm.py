"""A Pipecat LLM service that routes each turn with voxroute's router and answers through its ladder.

Each ``LLMContextFrame`` is one turn: the user's last words are routed (``Conversation.decide``:
class, tier, reason, the ladder of model paths, the class's budget), then streamed through
:class:`voxroute.agent.ladder.LLMLadder`, the ladder voxroute's own calls use: a retriable error retried
once while the budget allows, the next rung on a hang or a path in cooldown, a hedge when the
first token is late (never past what is left of the budget), and a continuation on the next rung
after a mid-stream error. The deadline counts from the user's end of speech (the VAD's stop
frame). Tools offered in the Pipecat context go to the model; its calls come back as Pipecat
function calls (``run_function_calls``), whose results Pipecat puts in the context and sends
back as the next ``LLMContextFrame``. The route goes downstream in a ``MetricsFrame`` as
:class:`RouteMetricsData`, with token usage (``LLMUsageMetricsData``) and time to first token.

When every rung failed before saying anything, the service says the tenant's apology.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from pipecat.frames.frames import (
    Frame,
    FunctionCallFromLLM,
    LLMContextFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    MetricsFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.metrics.metrics import LLMTokenUsage, LLMUsageMetricsData, MetricsData
from pipecat.processors.frame_processor import FrameDirection
from pipecat.services.llm_service import LLMService
from pipecat.services.settings import LLMSettings

from voxroute.agent.answer import with_guidance
from voxroute.agent.ladder import LadderExhausted, LLMLadder
from voxroute.agent.services import Services
from voxroute.agent.timeline import Clock, TurnRecord
from voxroute.integrations.pipecat.budget import speech_end_ms
from voxroute.routing.route import Route
from voxroute.routing.router import is_devanagari

log = logging.getLogger("voxroute.pipecat")


class RouteMetricsData(MetricsData):
    """One turn's route and what answered it (voxroute's route as Pipecat metrics)."""

    routing_class: str
    tier: str
    reason: str
    budget_ms: int
    escalated: bool = False
    path: str | None = None  # the model path that answered (None: none did)
    rung: int | None = None
    fallbacks: list[dict[str, Any]] = []
    cost_usd: float = 0.0


def _text(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


class RoutedLLMService(LLMService):
    """voxroute's router and fallback ladder as a Pipecat LLM service.

    ``services``: voxroute's process-wide services (``voxroute.runtime.build_services``: the configured
    providers' clients, the router with its provider health); ``tenant`` picks the routing table and
    model paths. One instance serves one conversation (its escalation is sticky, as in a call)."""

    def __init__(self, services: Services, *, tenant: str = "default", channel: str = "voice", **kwargs):
        # Pipecat's settings: the model paths, temperature and max tokens come from voxroute's config.
        settings = LLMSettings(
            model=None, system_instruction=None, temperature=services.config.agent.temperature,
            max_tokens=services.config.agent.max_tokens, top_p=None, top_k=None, frequency_penalty=None,
            presence_penalty=None, seed=None, filter_incomplete_user_turns=False,
            user_turn_completion_config=None,
        )  # fmt: skip
        super().__init__(settings=kwargs.pop("settings", settings), **kwargs)
        self.services = services
        self.config = services.config
        self.tenant = tenant
        self.routing = services.router.conversation(tenant, channel)
        self.clock = Clock()
        self.turns: list[TurnRecord] = []
        self._speech_end: float | None = None

    def can_generate_metrics(self) -> bool:
        return True

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        # The turn's deadline counts from the end of the user's voice (the VAD's, else the turn's end).
        if isinstance(frame, UserStartedSpeakingFrame):
            self._speech_end = None
        elif isinstance(frame, VADUserStoppedSpeakingFrame):
            self._speech_end = speech_end_ms(frame, self.clock)
        elif isinstance(frame, UserStoppedSpeakingFrame) and self._speech_end is None:
            self._speech_end = speech_end_ms(frame, self.clock)
        if isinstance(frame, LLMContextFrame):
            await self.push_frame(LLMFullResponseStartFrame())
            try:
                await self._turn(frame)
            finally:
                await self.push_frame(LLMFullResponseEndFrame())
        else:
            await self.push_frame(frame, direction)

    async def _turn(self, frame: LLMContextFrame) -> None:
        context = frame.context
        params = await self._invocation_params(context)
        messages = [dict(m) for m in params["messages"]]
        tools = params.get("tools")
        tools = list(tools) if isinstance(tools, list) and tools else None
        last_user = next((m for m in reversed(messages) if m.get("role") == "user"), None)
        text = _text(last_user) if last_user is not None else ""
        language = "hi-IN" if is_devanagari(text) else self.config.language
        now = self.clock.now()
        speech_end = self._speech_end if self._speech_end is not None else now
        self._speech_end = None
        turn = TurnRecord(index=len(self.turns) + 1, transcript=text, language=language)
        turn.mark("speech_end", speech_end)
        self.turns.append(turn)
        route = self.routing.decide(text, language, budget_left_ms=speech_end + turn.budget_ms - now)
        turn.budget_ms = route.budget_ms
        turn.route = route
        turn.mark("route", self.clock.now())
        b = self.config.budget
        # A first token by then leaves time for the TTS to make audio before the bridge would play.
        first_token_by = speech_end + route.budget_ms - b.bridge_lead_ms - b.tts_first_audio_ms
        ladder = LLMLadder(
            self.config,
            self.services.llms,
            self.clock,
            turn,
            with_guidance(messages, route.guidance),
            f"pipecat:{id(self):x}:{turn.index}",
            models=self.services.router.models(self.tenant),
            health=self.services.router.health,
            first_token_by=first_token_by,
            tools=tools,
        )
        said = await self._stream(ladder, list(route.paths), speech_end)
        if ladder.tool_calls:
            await self.run_function_calls(
                [
                    FunctionCallFromLLM(
                        function_name=c.name, tool_call_id=c.id, arguments=c.arguments, context=context
                    )
                    for c in ladder.tool_calls
                ]
            )
        elif not said:
            turn.outcome = "apology"
            await self.push_frame(
                LLMTextFrame(self.config.phrase(self.config.agent.apology_phrases, language))
            )
        turn.mark("done", self.clock.now())
        self.routing.outcome(turn.outcome)
        await self._report(turn)

    async def _stream(self, ladder: LLMLadder, paths: list[str], speech_end: float) -> bool:
        """Run the ladder, pushing its text as it comes. True if anything was said."""
        texts: asyncio.Queue[str | None] = asyncio.Queue()
        said = False

        async def run() -> None:
            try:
                await ladder.run(paths, texts.put_nowait)
            finally:
                texts.put_nowait(None)

        await self.start_ttfb_metrics()
        left = speech_end + self.config.budget.hard_cap_ms - self.clock.now()
        try:
            async with asyncio.timeout(max(0.0, left) / 1000):
                async with asyncio.TaskGroup() as tg:
                    tg.create_task(run())
                    while (text := await texts.get()) is not None:
                        if not said:
                            said = True
                            await self.stop_ttfb_metrics()
                        await self.push_frame(LLMTextFrame(text))
        except* LadderExhausted:
            log.info("pipecat turn: every model path failed before a first token")
        except* TimeoutError:
            ladder.abandoned("no answer before the hard cap", "give up")
        return said

    async def _report(self, turn: TurnRecord) -> None:
        route, usage = turn.route or Route.unrouted("none", ""), turn.usage
        data: list[MetricsData] = [
            RouteMetricsData(
                processor=self.name,
                model=usage.get("model") or route.model or None,
                routing_class=route.routing_class,
                tier=route.tier,
                reason=route.reason,
                budget_ms=turn.budget_ms,
                escalated=route.escalated,
                path=usage.get("path"),
                rung=usage.get("rung"),
                fallbacks=list(turn.fallbacks),
                cost_usd=float(usage.get("cost_usd", 0.0)),
            )
        ]
        if "prompt_tokens" in usage:
            tokens = LLMTokenUsage(
                prompt_tokens=usage["prompt_tokens"],
                completion_tokens=usage["completion_tokens"],
                total_tokens=usage["prompt_tokens"] + usage["completion_tokens"],
            )
            data.append(LLMUsageMetricsData(processor=self.name, model=usage.get("model"), value=tokens))
        await self.push_frame(MetricsFrame(data=data))

    async def _invocation_params(self, context) -> dict[str, Any]:
        """The context as OpenAI-shaped messages and tools (Pipecat's OpenAI adapter)."""
        return await self.get_llm_adapter().get_llm_invocation_params(
            context, system_instruction=None, convert_developer_to_user=True
        )
