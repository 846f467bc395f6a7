"""Stand-ins for a tenant's HTTP tools in replays: each tool with ``stand_in: module:factory`` gets
that ASGI app served on 127.0.0.1 (a free port), and the tool's URL pointed at it."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

from voxroute.agent.tools.spec import _import


@contextlib.asynccontextmanager
async def stand_ins(config: Any) -> AsyncIterator[tuple[Any, dict[str, Any]]]:
    """Yield ``(config, apps)``: the config with every stand-in tool's URL on its local server, and
    the apps by ``tenant.tool`` (their state holds what they recorded). No stand-in: the same config."""
    from voxroute.server import serve_app

    apps: dict[str, Any] = {}
    tenants = {}
    async with contextlib.AsyncExitStack() as stack:
        for tenant, tools in config.tools.tenants.items():
            new = {}
            for name, tool in tools.items():
                if tool.kind == "http" and tool.stand_in and tool.url:
                    app = _import(tool.stand_in)()
                    base = await stack.enter_async_context(serve_app(app))
                    parts = urlsplit(tool.url)
                    rest = tool.url[len(f"{parts.scheme}://{parts.netloc}") :]
                    tool = tool.model_copy(update={"url": base + rest})
                    apps[f"{tenant}.{name}"] = app
                new[name] = tool
            tenants[tenant] = new
        if apps:
            tools = config.tools.model_copy(update={"tenants": tenants})
            config = config.model_copy(update={"tools": tools})
        yield config, apps
