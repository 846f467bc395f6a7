"""One call's handoff to a person: the summary, the webhook, the transfer, and coming back.

The session decides *that* a call goes to a person (a human request, DTMF 0, the model's tool, a
failed last rung, a class that ends with a person); :class:`Handover` does the rest in the call's own
task group, so the turn goes on speaking ("connecting you") meanwhile.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import TYPE_CHECKING, Any

from voxroute.agent.handoff.deterministic import whisper_sentence
from voxroute.agent.handoff.llm import summarise

if TYPE_CHECKING:
    from voxroute.agent.session import CallSession
    from voxroute.agent.timeline import TurnRecord

log = logging.getLogger("voxroute.call")


class Handover:
    def __init__(self, session: CallSession) -> None:
        self.session = session
        self.task: asyncio.Task | None = None

    def can_transfer(self) -> bool:
        s = self.session
        tenant = s.services.router.table.tenants[s.tenant]
        control = s.services.call_control
        return (
            control is not None
            and control.can_transfer(s.call_sid)
            and bool(tenant.human_queue)
            and s.tg is not None
        )

    def begin(self, turn: TurnRecord, why: str) -> None:
        """Summarise and transfer in the call's own task group: the turn goes on speaking meanwhile."""
        s = self.session
        if self.task is not None or not self.can_transfer():
            return
        assert s.tg is not None
        log.info("call %s turn %d: handing off (%s)", s.call_sid, turn.index, why)
        self.task = s.tg.create_task(
            self._run(turn, why, asyncio.current_task()), name=f"{s.call_sid}:handoff"
        )

    def _summary_model(self) -> tuple[Any, str]:
        """The tenant's first reasoning path: it writes the summary (structured output)."""
        s = self.session
        table = s.services.router.table
        cell = table.cell(s.tenant, table.group(s.tenant, s.language), "voice", "human_request")
        mp = table.models[s.tenant][cell.ladder[0]]
        return s.services.llms.get(mp.provider), mp.model

    async def _run(self, turn: TurnRecord, why: str, turn_task: asyncio.Task | None) -> None:
        s = self.session
        h = s.config.handoff
        tenant = s.services.router.table.tenants[s.tenant]
        t0 = s.clock.now()
        llm, model = self._summary_model()
        summary = await summarise(
            [t.as_dict() for t in s.turns],
            s.language,
            llm,
            model,
            timeout_s=h.summary_timeout_ms / 1000,
            tag=f"{s.call_sid}:handoff",
        )
        record: dict[str, Any] = {
            "trigger": why,
            "turn": turn.index,
            "to": tenant.human_queue,
            "summary_ms": round(s.clock.now() - t0, 1),
            "whisper": whisper_sentence(summary),
            "transferred": False,
            **summary.model_dump(mode="json"),
        }
        # For every process: the whisper and the dial action may reach another (bounded wait).
        await s.services.save_handoff(s.call_sid, record)
        if s.services.webhooks is not None and h.webhook_url:
            body = {
                "call_sid": s.call_sid,
                "tenant": s.tenant,
                "trigger": why,
                "summary": summary.model_dump(mode="json"),
            }
            s.services.webhooks.submit(h.webhook_url, json.dumps(body, ensure_ascii=False).encode())
        if turn_task is not None and turn_task is not asyncio.current_task():
            await asyncio.wait([turn_task])  # the caller hears "connecting you" before the line changes
        assert s.services.call_control is not None and tenant.human_queue
        # The caller comes back to whichever process the carrier reaches if the human leg fails.
        await s.services.save_conversation(s)
        try:
            ok = await s.services.call_control.transfer(s.call_sid, tenant.human_queue, tenant.caller_id)
        except Exception as exc:  # the carrier refused: the caller stays with the agent
            log.warning("call %s: transfer to %s failed: %s", s.call_sid, tenant.human_queue, exc)
            record["error"] = f"{type(exc).__name__}: {exc}"[:300]
            self.task = None
            await s.services.save_handoff(s.call_sid, record, wait=False)
            await s.asides.play("callback")
            return
        record["transferred"] = ok
        if not ok:  # the call had already ended
            await s.services.save_handoff(s.call_sid, record, wait=False)
            return
        log.info("call %s: transferred to %s; closing the media stream", s.call_sid, tenant.human_queue)
        s.ended = "handoff"  # first: the far end may hang up while the record is written
        s.outcome, s.outcome_reason = "handoff", "transferred to a person"
        await s.services.save_handoff(s.call_sid, record)  # the transfer, for the next request anywhere
        await s.link.hangup()
