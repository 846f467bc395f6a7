"""The embedded stack's wiring: the local engine for the languages it knows and another provider for
the rest, and the scripted LLM's routing-class line."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from voxroute.agent.providers.local.stt import LocalWhisperSTT
from voxroute.agent.providers.local.tts import LocalPiperTTS
from voxroute.audio import PCM16_8K, WireFormat

if TYPE_CHECKING:
    from voxroute.agent.session import CallSession


# ---------------------------------------------------------------- by language


class ByLanguageSTT:
    """The local engine for the languages it knows, another provider (Sarvam, real or emulated) for the rest."""

    def __init__(self, local: LocalWhisperSTT, other) -> None:
        self.local, self.other = local, other
        self.name = f"{local.name}+{other.name}" if other is not None else local.name

    async def connect(self, language: str, tag: str | None = None):
        if self.local.supports(language) or self.other is None:
            return await self.local.connect(language, tag=tag)
        return await self.other.connect(language, tag=tag)

    async def aclose(self) -> None:
        await self.local.aclose()


class ByLanguageTTS:
    def __init__(self, local: LocalPiperTTS, other) -> None:
        self.local, self.other = local, other
        self.name = f"{local.name}+{other.name}" if other is not None else local.name

    def _pick(self, language: str):
        return self.local if self.local.supports(language) or self.other is None else self.other

    async def open(
        self, language: str, voice: str | None = None, tag: str | None = None, fmt: WireFormat = PCM16_8K
    ):
        return await self._pick(language).open(language, voice, tag=tag, fmt=fmt)

    async def synthesize(
        self,
        text: str,
        language: str,
        voice: str | None = None,
        tag: str | None = None,
        fmt: WireFormat = PCM16_8K,
    ) -> bytes:
        return await self._pick(language).synthesize(text, language, voice, tag=tag, fmt=fmt)

    async def __aenter__(self) -> ByLanguageTTS:
        if self.other is not None:
            await self.other.__aenter__()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.local.aclose()
        if self.other is not None:
            await self.other.__aexit__(*exc)

    async def aclose(self) -> None:
        await self.__aexit__(None, None, None)


# ---------------------------------------------------------------- the scripted LLM's routing class

CLASS_MARKER = "voxroute-routing-class:"  # emulators/scripted.py reads this system line
ACK_MARKER = "voxroute-reply: acknowledgement"  # ... and this one: the fast path's acknowledgement


class ClassTaggedLLM:
    """Wraps an emulated LLM: adds one system line naming the turn's routing class, which the
    emulator's scripted responder answers to, and one more on the acknowledgement the fast path
    says before a reasoning answer (tag ``...:ack``, agent/answer.py), so that it is an
    acknowledgement and not the answer's first sentence said twice. Only ever wraps emulated
    providers."""

    def __init__(self, inner, class_of) -> None:
        self.inner = inner
        self.name = inner.name
        self.class_of = class_of  # tag -> routing class or None

    def __getattr__(self, item):
        return getattr(self.inner, item)

    def stream(self, request, **kwargs):
        cls = self.class_of(request.tag) if request.tag else None
        if cls:
            # a copy: the caller's request stays as asked (an early request is compared with the
            # turn's own request word for word, agent/preemptive.py)
            marked = [*request.messages, {"role": "system", "content": f"{CLASS_MARKER} {cls}"}]
            if request.tag.split(":")[2:3] == ["ack"]:
                marked.append({"role": "system", "content": ACK_MARKER})
            request = dataclasses.replace(request, messages=marked)
        return self.inner.stream(request, **kwargs)

    async def aclose(self) -> None:
        await self.inner.aclose()


def class_lookup(calls: Mapping[str, CallSession]) -> Callable[[str], str | None]:
    """tag "CALLSID:TURN[:suffix]" -> the routing class the router gave that turn (``calls``: the
    live calls, ``Services.calls``)."""

    def class_of(tag: str) -> str | None:
        parts = tag.split(":")
        if len(parts) < 2 or not parts[1].isdigit():
            return None
        session = calls.get(parts[0])
        if session is None:
            return None
        index = int(parts[1])
        for turn in reversed(session.turns):
            if turn.index == index:
                return turn.route.routing_class if turn.route is not None else None
        early = session.early.pending  # an early request: the turn is not committed yet
        if early is not None and early.index == index:
            return early.routing_class
        return None

    return class_of
