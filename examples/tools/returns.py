"""``start_return``: a Python tool (examples/retail.yaml, ``stakes: high``).

The argument schema the model sees comes from the type hints; ``context`` is not the model's: the
runtime passes a :class:`~agent.tools.spec.ToolContext` whose idempotency key makes a repeated call
(a retried turn) return the same return instead of opening a second one.
"""

from __future__ import annotations

import zlib
from typing import Literal

from voxroute.agent.tools.spec import ToolContext

STARTED: dict[str, dict[str, str]] = {}  # idempotency key -> the return it opened (a real shop: its database)


async def start_return(
    order_id: str, reason: Literal["damaged", "wrong item", "changed mind", "other"], context: ToolContext
) -> dict[str, str]:
    """Open a return for an order; the caller gets a return reference and a pickup window."""
    if context.idempotency_key in STARTED:
        return STARTED[context.idempotency_key]
    ref = f"R{zlib.crc32(f'{order_id}:{context.call_sid}'.encode()) % 100000:05d}"
    result = {"return_id": ref, "order_id": order_id.upper(), "pickup": "tomorrow 10am-2pm", "reason": reason}
    STARTED[context.idempotency_key] = result
    return result
