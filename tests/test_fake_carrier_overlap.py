"""The fake carrier's sounds over the agent (emulators/carrier.py): an item that is no turn (an
"mm-hm", a cough: ``expect_turn: false``, ``play: barge_in``) is played over the agent's reply, or
not at all. A fault can cut a reply short (the chaos profile's TTS drop); the backchannel fixture's
later sounds then had no reply to talk over: played into the silence, the cough became a caller
turn of its own (an extra turn with an empty transcript in test_replay's chaos test), or the
carrier waited 20 s for reply audio that never came. Driven tick by tick, sans-I/O."""

from __future__ import annotations

import base64
import json
from pathlib import Path

from tests.test_carrier import AGENT_TONE, make_fixture
from voxroute.emulators.carrier import FakeTwilioCall, make_ids

# The synthetic WAV's three tones: 200-800 ms, 1100-1600 ms, 1900-2300 ms.
SCRIPT = [
    {"start_ms": 200, "end_ms": 800, "text": "hello", "play": "after_agent", "gap_ms": 300},
    {
        "start_ms": 1100,
        "end_ms": 1600,
        "text": "mm-hm",
        "play": "barge_in",
        "offset_ms": 100,
        "expect_turn": False,
    },
    {
        "start_ms": 1900,
        "end_ms": 2300,
        "text": "",
        "play": "barge_in",
        "offset_ms": 100,
        "expect_turn": False,
    },
    {"dtmf": "1", "play": "after_agent", "gap_ms": 300},
]


def _replay(tmp_path: Path, reply_ms: int) -> FakeTwilioCall:
    """The agent answers the first item with ``reply_ms`` of audio and the keypad item with 100 ms,
    paced as the runtime's player sends (two frames ahead, then one each 20 ms), each reply's end
    mark after its audio; the call runs until the carrier is done."""
    call = FakeTwilioCall(make_fixture(tmp_path, SCRIPT), ids=make_ids("overlap"), agent_wait_s=20.0)
    call.open()
    sid = call.ids.stream_sid
    outbox: list[dict] = []  # the agent's media frames and marks, in order

    def send(frames: int) -> None:
        while outbox and frames:
            event = outbox.pop(0)
            call.receive(json.dumps(event))
            frames -= event["event"] == "media"
        if outbox and outbox[0]["event"] == "mark":  # a mark goes right after the audio before it
            call.receive(json.dumps(outbox.pop(0)))

    answered: set[int] = set()
    for _ in range(2000):  # 40 s of carrier time at most
        call.tick()
        send(1)
        for item, turn, ms in ((0, 1, reply_ms), (3, 2, 100)):
            if call.result.items[item].ended_at is not None and item not in answered:
                answered.add(item)
                audio = (AGENT_TONE * 3)[: ms * 8]
                for i in range(0, len(audio), 160):
                    payload = base64.b64encode(audio[i : i + 160]).decode()
                    outbox.append({"event": "media", "streamSid": sid, "media": {"payload": payload}})
                outbox.append({"event": "mark", "streamSid": sid, "mark": {"name": f"{turn}:end"}})
                send(2)
        if call.finished:
            break
    call.stop()
    return call


def test_a_reply_long_enough_has_every_sound_played_over_it(tmp_path):
    call = _replay(tmp_path, reply_ms=2000)
    items = call.result.items
    assert not any(it.skipped for it in items)
    assert items[2].started_at is not None and items[2].ended_at is not None
    reply_end = call.result.marks[0].echoed_at
    assert items[2].ended_at < reply_end  # the cough was over the agent
    assert call.result.completed and call.result.errors == []


def test_a_sound_over_a_reply_that_has_ended_is_not_played(tmp_path):
    # 500 ms: the reply ends during the "mm-hm" (which starts 100 ms into it and lasts 500 ms).
    call = _replay(tmp_path, reply_ms=500)
    items = call.result.items
    assert items[1].started_at is not None and not items[1].skipped
    assert items[2].skipped and items[2].started_at is None
    # the keypad item counts its gap from the moment the "mm-hm" ended (the reply was over)
    assert items[3].started_at == round(items[1].ended_at + 0.3, 2)
    assert call.result.completed and call.result.errors == []


def test_a_reply_that_ends_after_the_sound_but_plays_nothing_more_is_over(tmp_path):
    # 600 ms: when the "mm-hm" ends, the reply's last frames are queued and its end mark sent: no
    # audio comes after the "mm-hm", and the next sound waited for some until the 20 s wait ran out.
    call = _replay(tmp_path, reply_ms=600)
    items = call.result.items
    assert items[1].reply_started_at is None and items[1].reply_finished_at is not None
    assert items[2].skipped
    assert items[3].started_at == round(items[1].reply_finished_at + 0.3, 2)
    assert call.result.completed and call.result.errors == []
    assert call.now < 5.0
