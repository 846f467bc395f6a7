"""Log set-up for the ``voxroute`` command: plain text, or JSON lines for a log pipeline.

``--log-format json`` writes one JSON object per line::

    {"time": "2026-12-03T16:30:00.123Z", "level": "INFO", "logger": "voxroute.agent.session",
     "message": "call CA1 started (tenant=default language=en-IN)", "call_sid": "CA1", "turn": 2}

``call_sid`` and ``turn`` come from context variables the call session sets (:func:`call_context` around
a call, :data:`TURN` in each turn's task): every line logged while a call runs carries its call, and
every line logged by a turn's strand its turn (``null`` outside). An exception adds ``"exc"``.

Every handler gets :class:`~agent.calllog.redact.RedactingFilter` first: no card, phone number or
e-mail address in clear in any line, in either format.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator
from contextvars import ContextVar
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from voxroute.agent.calllog.redact import RedactingFilter

LogFormat = Literal["text", "json"]
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
WORKER_TEXT_FORMAT = "%(asctime)s %(levelname)s worker %(worker)d %(name)s: %(message)s"  # serve --workers
NOISY = ("httpx", "httpcore", "websockets", "uvicorn.access", "uvicorn.error")

CALL_SID: ContextVar[str | None] = ContextVar("voxroute_call_sid", default=None)
TURN: ContextVar[int | None] = ContextVar("voxroute_turn", default=None)


@contextlib.contextmanager
def call_context(call_sid: str) -> Iterator[None]:
    """Lines logged inside (and in tasks created inside) carry ``call_sid``."""
    token = CALL_SID.set(call_sid)
    try:
        yield
    finally:
        CALL_SID.reset(token)


class CallContextFilter(logging.Filter):
    """Puts the current call and turn on the record (``record.call_sid``, ``record.turn``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.call_sid = CALL_SID.get()
        record.turn = TURN.get()
        return True


class WorkerFilter(logging.Filter):
    """Puts the ``serve --workers`` worker's index on the record (``record.worker``)."""

    def __init__(self, index: int) -> None:
        super().__init__()
        self.index = index

    def filter(self, record: logging.LogRecord) -> bool:
        record.worker = self.index
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (newlines in the message are escaped by JSON)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")[:-6] + "Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "call_sid": getattr(record, "call_sid", None),
            "turn": getattr(record, "turn", None),
        }
        worker = getattr(record, "worker", None)
        if worker is not None:
            entry["worker"] = worker
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:  # already redacted by RedactingFilter
            entry["exc"] = record.exc_text
        if record.stack_info:
            entry["stack"] = record.stack_info
        return json.dumps(entry, ensure_ascii=False, default=str)


def configure_handler(
    handler: logging.Handler, log_format: LogFormat = "text", worker: int | None = None
) -> logging.Handler:
    """``handler`` with the format and filters every voxroute log handler has; ``worker``: the index of
    a ``serve --workers`` worker, named on every line."""
    text = TEXT_FORMAT if worker is None else WORKER_TEXT_FORMAT
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(text))
    if worker is not None:
        handler.addFilter(WorkerFilter(worker))
    # Redaction first: no card, phone number or e-mail address in clear in any log line.
    handler.addFilter(RedactingFilter())
    handler.addFilter(CallContextFilter())
    return handler


def setup_logging(
    verbose: bool, log_file: Path | None = None, log_format: LogFormat = "text", worker: int | None = None
) -> None:
    """Root logging for a command: stderr at INFO (``verbose``) or WARNING, and ``log_file`` at INFO;
    ``worker``: a ``serve --workers`` worker's index, on every line."""
    level = logging.INFO if verbose else logging.WARNING
    handlers: list[logging.Handler] = []
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        fh = logging.FileHandler(log_file)
        fh.setLevel(logging.INFO)
        handlers.append(fh)
    sh = logging.StreamHandler()
    sh.setLevel(level)
    handlers.append(sh)
    for handler in handlers:
        configure_handler(handler, log_format, worker)
    logging.basicConfig(level=logging.INFO if log_file else level, handlers=handlers)
    for noisy in NOISY:
        logging.getLogger(noisy).setLevel(logging.WARNING)
