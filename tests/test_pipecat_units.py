"""voxroute's Pipecat parts without sockets (issue 16): the turn deadline on a fake clock, the Twilio
serializer against voxroute's Twilio peer codec, and the heard-text processor in front of Pipecat's
own assistant context aggregator."""

from __future__ import annotations

import pytest

pytest.importorskip("pipecat", reason="needs the pipecat extra: pip install -e '.[pipecat]'")

from pipecat.frames.frames import (  # noqa: E402
    InputAudioRawFrame,
    InputDTMFFrame,
    InterruptionFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMMessagesTransformFrame,
    OutputAudioRawFrame,
    OutputTransportMessageUrgentFrame,
    TTSTextFrame,
)
from pipecat.pipeline.pipeline import Pipeline  # noqa: E402
from pipecat.processors.aggregators.llm_context import LLMContext  # noqa: E402
from pipecat.processors.aggregators.llm_response_universal import LLMContextAggregatorPair  # noqa: E402
from pipecat.tests.utils import SleepFrame, run_test  # noqa: E402

from voxroute.agent.player import MarkLedger  # noqa: E402
from voxroute.agent.session import INTERRUPTED_MARK  # noqa: E402
from voxroute.integrations.pipecat import (  # noqa: E402
    HeardTextProcessor,
    MarkEchoFrame,
    TurnDeadline,
    TwilioMarkSerializer,
)
from voxroute.telephony.twilio import OutboundClear, OutboundMark, OutboundMedia, TwilioPeer, TwilioStream  # noqa: E402

# ---------------------------------------------------------------- the deadline, on a fake clock


def test_no_answer_by_budget_minus_lead_plays_the_bridge_then_the_apology_at_the_hard_cap():
    d = TurnDeadline(1000.0, 1000, bridge_lead_ms=150, hard_cap_ms=8000, refill_ms=2500)
    assert d.next_at() == 1850.0
    assert d.due(1849.9) is None
    assert d.due(1850.0) == "bridge"
    assert d.next_at() == 1850.0 + 2500
    assert d.due(4349.0) is None
    assert d.due(4350.0, speaking=True) is None  # the line is not quiet: no second bridge over it
    assert d.next_at() == 6850.0
    assert d.due(6850.0) == "bridge"
    assert d.next_at() == 9000.0  # the hard cap comes before the next refill
    assert d.due(9000.0) == "apology"
    assert d.next_at() is None and d.bridges == 2 and d.apologised


def test_an_answer_in_time_plays_nothing():
    d = TurnDeadline(0.0, 1000, bridge_lead_ms=150)
    d.answer_started()
    assert d.next_at() is None
    assert d.due(10_000.0) is None and d.bridges == 0


def test_an_answer_after_the_bridge_stops_the_refills_and_the_apology():
    d = TurnDeadline(0.0, 800, bridge_lead_ms=150)
    assert d.due(650.0) == "bridge"
    d.answer_started()
    assert d.next_at() is None and d.due(9000.0) is None


def test_a_budget_changed_by_the_route_moves_the_bridge():
    d = TurnDeadline(0.0, 1000, bridge_lead_ms=150)
    d.budget_ms = 2500  # the route's class has a longer budget
    assert d.due(900.0) is None
    assert d.next_at() == 2350.0


# ---------------------------------------------------------------- the serializer and the codec


def started(peer: TwilioPeer) -> TwilioStream:
    stream = TwilioStream()
    stream.feed(peer.connected())
    stream.feed(peer.start())
    return stream


async def test_the_serializer_speaks_twilio_through_voxroutes_codec():
    peer = TwilioPeer("MZ" + "0" * 32, "CA" + "1" * 32)
    serializer = TwilioMarkSerializer(started(peer))
    assert serializer.call_sid == peer.call_sid
    frame = await serializer.deserialize(peer.media(b"\xff" * 160))
    assert isinstance(frame, InputAudioRawFrame) and len(frame.audio) == 320 and frame.sample_rate == 8000
    assert isinstance(await serializer.deserialize(peer.dtmf("5")), InputDTMFFrame)
    echo = await serializer.deserialize(peer.mark("heard-7"))
    assert isinstance(echo, MarkEchoFrame) and echo.mark == "heard-7"
    assert await serializer.deserialize('{"event": "media", "streamSid": 5}') is None  # logged, not raised

    (media,) = peer.feed(await serializer.serialize(OutputAudioRawFrame(b"\x00\x01" * 160, 8000, 1)))
    assert isinstance(media, OutboundMedia) and len(media.payload) == 160
    # 16 kHz audio is resampled to Twilio's 8 kHz mu-law (a stream resampler: it holds a short tail)
    sent = 0
    for _ in range(5):  # 5 x 200 ms
        wide = await serializer.serialize(OutputAudioRawFrame(b"\x00\x10" * 3200, 16000, 1))
        sent += len(peer.feed(wide)[0].payload)
    assert 5 * 1600 - 1000 <= sent <= 5 * 1600
    mark = await serializer.serialize(OutputTransportMessageUrgentFrame(message={"voxroute_mark": "heard-1"}))
    assert peer.feed(mark) == [OutboundMark("heard-1")]
    assert peer.feed(await serializer.serialize(InterruptionFrame())) == [OutboundClear()]


def test_the_serializer_needs_a_started_stream():
    with pytest.raises(ValueError, match="start"):
        TwilioMarkSerializer(TwilioStream())


# ---------------------------------------------------------------- heard text, into Pipecat's context


def sent_marks(up) -> list[str]:
    return [f.message["voxroute_mark"] for f in up if isinstance(f, OutputTransportMessageUrgentFrame)]


def tts_text(text: str) -> TTSTextFrame:
    frame = TTSTextFrame(text, text_type="sentence")
    frame.append_to_context = True
    return frame


async def test_after_an_interruption_the_context_keeps_only_the_chunks_whose_marks_came_back():
    context = LLMContext([{"role": "user", "content": "Where is my order?"}])
    pair = LLMContextAggregatorPair(context)
    heard = HeardTextProcessor()
    frames = [
        LLMFullResponseStartFrame(),
        tts_text("Order A17 has shipped."),
        tts_text("It should reach you within two days."),
        tts_text("Anything else?"),
        LLMFullResponseEndFrame(),
        SleepFrame(0.05),  # system frames overtake queued data frames: let those through first
        MarkEchoFrame(mark="heard-1"),  # only the first chunk had played when the caller spoke
        SleepFrame(0.05),
        InterruptionFrame(),
        SleepFrame(0.05),
        MarkEchoFrame(mark="heard-2"),  # Twilio echoes the marks a clear flushed: not heard
        MarkEchoFrame(mark="heard-3"),
    ]
    down, up = await run_test(Pipeline([heard, pair.assistant()]), frames_to_send=frames)
    # the whole reply had gone out (its end came through the output transport): its end mark too
    assert sent_marks(up) == ["heard-1", "heard-2", "heard-3", "reply-1:end"]
    assert context.get_messages()[-1] == {
        "role": "assistant",
        "content": f"Order A17 has shipped. {INTERRUPTED_MARK}",
    }
    assert heard.heard == ["Order A17 has shipped."]
    assert heard.interruptions == [
        {"heard": "Order A17 has shipped.", "dropped": "It should reach you within two days. Anything else?"}
    ]


async def test_without_an_interruption_the_reply_goes_to_the_context_once_heard():
    context = LLMContext([{"role": "user", "content": "Hi"}])
    pair = LLMContextAggregatorPair(context)
    heard = HeardTextProcessor()
    frames = [
        LLMFullResponseStartFrame(),
        tts_text("Hello."),
        tts_text("How can I help?"),
        LLMFullResponseEndFrame(),  # held behind the chunks until their marks come back
        SleepFrame(0.05),
        MarkEchoFrame(mark="heard-1"),
        MarkEchoFrame(mark="heard-2"),
    ]
    down, up = await run_test(Pipeline([heard, pair.assistant()]), frames_to_send=frames)
    assert context.get_messages()[-1] == {"role": "assistant", "content": "Hello. How can I help?"}
    assert heard.interruptions == []
    # after the reply's last audio, the end mark the fake carrier (and voxroute's player) use
    assert sent_marks(up) == ["heard-1", "heard-2", "reply-1:end"]


async def test_nothing_heard_leaves_no_assistant_message():
    context = LLMContext([{"role": "user", "content": "Hi"}])
    pair = LLMContextAggregatorPair(context)
    heard = HeardTextProcessor()
    frames = [
        LLMFullResponseStartFrame(),
        tts_text("Hello."),
        SleepFrame(0.05),
        InterruptionFrame(),
        SleepFrame(0.05),
        MarkEchoFrame(mark="heard-1"),
        LLMFullResponseEndFrame(),
    ]
    down, up = await run_test(Pipeline([heard, pair.assistant()]), frames_to_send=frames)
    assert context.get_messages() == [{"role": "user", "content": "Hi"}]
    assert sent_marks(up) == ["heard-1"]  # a cut reply has no end, even if its end frame comes late
    assert not any(isinstance(f, LLMMessagesTransformFrame) for f in down)
    assert heard.interruptions == [{"heard": "", "dropped": "Hello."}]


# ---------------------------------------------------------------- the routed LLM service's wiring


class ScriptedLLM:
    """An in-process provider (the socket version is tests/test_pipecat_llm.py, on the emulators):
    ``fail`` errors before a first token, in order; then a tool call when tools are offered and the
    caller names an order, else a two-piece reply."""

    def __init__(self, name: str, fail: list[str] | None = None) -> None:
        self.name = name
        self.fail = list(fail or [])
        self.requests: list = []

    async def stream(self, req):
        from voxroute.agent.providers.base import LLMToken, ProviderError
        from voxroute.agent.providers.openai_compat import LLMToolCalls
        from voxroute.agent.providers.openai_protocol import ToolCall

        self.requests.append(req)
        if self.fail:
            raise ProviderError(self.name, self.fail.pop(0), "scripted")
        last = req.messages[-1]
        if req.tools and last["role"] == "user" and "A17" in str(last["content"]):
            yield LLMToolCalls((ToolCall(id="call_1", name="lookup_order", arguments={"order_id": "A17"}),))
            return
        said = "It has shipped. " if last["role"] == "tool" else "Happy to help. "
        for piece in (said, f"({req.model})"):
            yield LLMToken(piece)


def routed_service(fail: dict[str, list[str]] | None = None):
    from voxroute.agent.config import load_config
    from voxroute.agent.services import Services
    from voxroute.integrations.pipecat import RoutedLLMService
    from voxroute.runtime import build_router

    config = load_config()
    llms = {name: ScriptedLLM(name, (fail or {}).get(name)) for name in config.providers}
    services = Services(config, None, None, llms, build_router(config))  # type: ignore[arg-type]
    return RoutedLLMService(services), llms


async def test_the_routed_service_answers_through_the_ladder_and_reports_the_route():
    from pipecat.frames.frames import LLMContextFrame, LLMTextFrame, MetricsFrame

    from voxroute.integrations.pipecat import RouteMetricsData

    llm, llms = routed_service({"openrouter": ["http_500", "http_500"]})
    context = LLMContext([{"role": "user", "content": "What are your opening hours?"}])
    down, _ = await run_test(llm, frames_to_send=[LLMContextFrame(context)])
    text = "".join(f.text for f in down if isinstance(f, LLMTextFrame))
    assert text == "Happy to help. (sarvam-30b)"  # the fast path failed twice: the backup rung answered
    (route,) = [
        d for f in down if isinstance(f, MetricsFrame) for d in f.data if isinstance(d, RouteMetricsData)
    ]
    assert route.tier == "fast" and route.path == "fast_backup" and route.rung == 2
    assert [(f["kind"], f["action"].split(";")[0]) for f in route.fallbacks] == [
        ("http_500", "retry same path"),
        ("http_500", "next rung"),
    ]
    assert route.routing_class and route.reason and route.budget_ms > 0


async def test_pipecat_function_calls_pass_through_the_routed_service():
    from pipecat.adapters.schemas.function_schema import FunctionSchema
    from pipecat.adapters.schemas.tools_schema import ToolsSchema
    from pipecat.frames.frames import LLMContextFrame
    from pipecat.services.llm_service import FunctionCallParams

    llm, llms = routed_service()
    calls = []

    async def lookup_order(params: FunctionCallParams) -> None:
        calls.append(dict(params.arguments))
        await params.result_callback({"status": "shipped"})

    llm.register_function("lookup_order", lookup_order)
    schema = FunctionSchema(
        name="lookup_order",
        description="Look an order up",
        properties={"order_id": {"type": "string"}},
        required=["order_id"],
    )
    context = LLMContext([{"role": "user", "content": "Where is order A17?"}], tools=ToolsSchema([schema]))
    pair = LLMContextAggregatorPair(context)
    frames = [LLMContextFrame(context), SleepFrame(0.5)]
    await run_test(Pipeline([llm, pair.assistant()]), frames_to_send=frames)
    assert calls == [{"order_id": "A17"}]
    offered = llms["openrouter"].requests[0].tools
    assert offered and offered[0]["function"]["name"] == "lookup_order"
    messages = context.get_messages()
    assert messages[-1]["role"] == "assistant" and messages[-1]["content"].startswith("It has shipped.")
    assert any(m.get("role") == "tool" for m in messages)


# ---------------------------------------------------------------- the budget processor's wiring


def short_phrases():
    from voxroute.integrations.pipecat import Phrase

    return {
        "bridge": Phrase("One moment.", b"\x01\x00" * 800),
        "apology": Phrase("Sorry.", b"\x02\x00" * 400),
    }


async def test_the_budget_processor_bridges_then_apologises_when_no_answer_audio_comes():
    from pipecat.frames.frames import TTSAudioRawFrame, UserStoppedSpeakingFrame

    from voxroute.integrations.pipecat import TurnBudgetProcessor

    budget = TurnBudgetProcessor(short_phrases(), budget_ms=200, bridge_lead_ms=100, hard_cap_ms=400)
    down, _ = await run_test(budget, frames_to_send=[UserStoppedSpeakingFrame(), SleepFrame(0.7)])
    audio = b"".join(f.audio for f in down if isinstance(f, TTSAudioRawFrame))
    assert (budget.bridges, budget.apologies) == (1, 1)
    assert audio == b"\x01\x00" * 800 + b"\x02\x00" * 400  # the bridge, then the apology, in 20 ms frames
    assert max(len(f.audio) for f in down if isinstance(f, TTSAudioRawFrame)) == 320  # 20 ms at most


async def test_answer_audio_before_the_deadline_keeps_the_budget_processor_quiet():
    from pipecat.frames.frames import TTSAudioRawFrame, UserStoppedSpeakingFrame

    from voxroute.integrations.pipecat import TurnBudgetProcessor

    budget = TurnBudgetProcessor(short_phrases(), budget_ms=300, bridge_lead_ms=100, hard_cap_ms=500)
    answer = TTSAudioRawFrame(b"\x07\x00" * 160, 8000, 1)
    frames = [UserStoppedSpeakingFrame(), SleepFrame(0.05), answer, SleepFrame(0.7)]
    down, _ = await run_test(budget, frames_to_send=frames)
    assert (budget.bridges, budget.apologies) == (0, 0)
    assert [f.audio for f in down if isinstance(f, TTSAudioRawFrame)] == [answer.audio]


def test_the_mark_ledger_the_player_and_the_heard_text_processor_share():
    marks = MarkLedger()
    marks.sent("1:0")
    marks.sent("1:1")
    assert marks.echoed("1:0") is True  # played
    marks.cleared()  # barge-in: 1:1 was still queued at the carrier
    assert marks.echoed("1:1") is False  # Twilio echoes what a clear flushed: not heard
    marks.sent("2:0")
    assert marks.echoed("2:0") is True  # a new reply after the clear is heard again
