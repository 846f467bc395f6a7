"""A tiny local order service: what ``lookup_order`` (examples/retail.yaml) calls.

``GET /orders/{order_id}`` answers the order's status as JSON (404 for an unknown order). Every
request is recorded (method, path, query, the ``Idempotency-Key`` header), so tests and replays can
check that a tool ran exactly once. ``mode`` makes it misbehave: ``"hang"`` (never answers),
``"error"`` (HTTP 500), ``"slow"`` (answers after ``delay_s``).

Run it alone: ``python -m examples.tools.order_service --port 8095``.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

ORDERS: dict[str, dict[str, Any]] = {
    "A1745": {"status": "shipped", "eta": "Friday", "carrier": "BlueDart", "warehouse_note": "bin 4C"},
    "A2210": {"status": "out for delivery", "eta": "today", "carrier": "Delhivery", "warehouse_note": ""},
    "4521": {"status": "being packed", "eta": "Monday", "carrier": "Ekart", "warehouse_note": ""},
}


class OrderService:
    def __init__(self, orders: dict[str, dict[str, Any]] | None = None) -> None:
        self.orders = dict(ORDERS if orders is None else orders)
        self.requests: list[dict[str, Any]] = []
        self.requested = asyncio.Event()  # set at the first request
        self.mode = "ok"  # ok, hang, error, slow
        self.delay_s = 0.0
        self.app = FastAPI(title="example order service")
        self.app.state.service = self

        @self.app.get("/orders/{order_id}")
        async def order(order_id: str, request: Request) -> JSONResponse:
            self.requests.append(
                {
                    "method": request.method,
                    "path": request.url.path,
                    "query": dict(request.query_params),
                    "idempotency_key": request.headers.get("idempotency-key"),
                    "authorization": bool(request.headers.get("authorization")),
                }
            )
            self.requested.set()
            if self.mode == "hang":
                await asyncio.Future()  # until the client goes away
            if self.mode == "error":
                return JSONResponse({"error": "internal error"}, 500)
            if self.mode == "slow":
                await asyncio.sleep(self.delay_s)
            found = self.orders.get(order_id.upper().replace("-", ""))
            if found is None:
                return JSONResponse({"error": f"no order {order_id}"}, 404)
            return JSONResponse({"order_id": order_id.upper(), **found})


def create_app() -> FastAPI:
    """A fresh service (``app.state.service`` holds its recorded requests)."""
    return OrderService().app


if __name__ == "__main__":  # pragma: no cover - manual use
    import argparse

    import uvicorn

    parser = argparse.ArgumentParser(description="example order service")
    parser.add_argument("--port", type=int, default=8095)
    uvicorn.run(create_app(), host="127.0.0.1", port=parser.parse_args().port)
