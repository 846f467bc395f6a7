"""The one operator check (agent.pages.OperatorAuth) on every operator route of the runtime's app, over
a socket: each of the five forms of the key opens each route, and no key, a wrong key in any form
or a forged cookie is a 401 that names the schemes."""

from __future__ import annotations

import base64

import httpx
import pytest

from voxroute.agent.config import load_config
from voxroute.agent.pages import COOKIE_NAME, OperatorAuth
from voxroute.agent.services import Services
from voxroute.runtime import build_router, create_runtime_app
from voxroute.server import serve_app

KEY = "operator-key-for-auth-tests"
STEP = 10.0

# Every operator route: (method, path, JSON body or None, the status it answers once allowed).
ROUTES = [
    ("GET", "/calls", None, 200),
    ("GET", "/calls/CAnone", None, 404),  # allowed through, then: no such call
    ("GET", "/calls/CAauth/handoff", None, 200),
    ("POST", "/calls/CAnone/outcome", {"outcome": "resolved"}, 404),
    ("GET", "/debug/stats", None, 200),
    ("GET", "/debug/routing", None, 200),
    ("GET", "/debug/engines", None, 200),
    ("POST", "/debug/stats/reset", None, 200),
    ("GET", "/metrics", None, 200),
]


def basic(password: str, user: str = "ops") -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def forms(key: str, cookie: str) -> dict[str, tuple[dict[str, str], dict[str, str]]]:
    """Each form of the key: (headers, query parameters)."""
    return {
        "x-api-key": ({"X-API-Key": key}, {}),
        "bearer": ({"Authorization": f"Bearer {key}"}, {}),
        "basic": ({"Authorization": basic(key)}, {}),
        "query": ({}, {"key": key}),
        "cookie": ({"Cookie": f"{COOKIE_NAME}={cookie}"}, {}),
    }


@pytest.fixture
async def http(monkeypatch):
    monkeypatch.setenv("VOXROUTE_API_KEY", KEY)
    config = load_config()
    services = Services(config, None, None, {}, build_router(config), mode="emulated")  # type: ignore[arg-type]
    services.handoffs["CAauth"] = {"reason": "billing", "whisper": "A billing question."}
    app = create_runtime_app(services, dev=True)
    async with serve_app(app) as url, httpx.AsyncClient(base_url=url, timeout=STEP) as client:
        yield client


async def call(http: httpx.AsyncClient, route, headers: dict[str, str], params: dict[str, str]):
    method, path, body, _ = route
    return await http.request(method, path, headers=headers, params=params, json=body)


async def test_the_cookie_comes_from_key_in_the_url(http):
    page = await http.get("/calls", params={"key": KEY}, headers={"Accept": "text/html"})
    assert page.status_code == 303
    assert http.cookies.get(COOKIE_NAME) == OperatorAuth(KEY).cookie_value != KEY


@pytest.mark.parametrize("form", ["x-api-key", "bearer", "basic", "query", "cookie"])
async def test_every_form_opens_every_route(http, form):
    headers, params = forms(KEY, OperatorAuth(KEY).cookie_value)[form]
    got = {route[1]: (await call(http, route, headers, params)).status_code for route in ROUTES}
    assert got == {path: status for _, path, _, status in ROUTES}


@pytest.mark.parametrize("form", ["none", "x-api-key", "bearer", "basic", "query", "cookie"])
async def test_no_key_or_a_wrong_one_is_refused_everywhere(http, form):
    wrong = forms(KEY + "x", "f" * 64) | {"none": ({}, {})}
    headers, params = wrong[form]
    for route in ROUTES:
        r = await call(http, route, headers, params)
        assert r.status_code == 401, route
        assert r.json() == {"detail": "a valid API key is required"}, route
        challenge = r.headers["www-authenticate"]
        assert challenge.startswith("Bearer ") and "Basic " in challenge, route


async def test_near_misses_are_refused(http):
    near: list[dict[str, str | bytes]] = [
        {"Authorization": f"Bearer  {KEY}x"},
        {"Authorization": KEY},  # no scheme
        {"Authorization": f"Token {KEY}"},  # another scheme
        {"Authorization": basic("", user=KEY)},  # the key as the user name, not the password
        {"Authorization": "Basic %%%"},
        {"X-API-Key": KEY[:-1]},
        {"X-API-Key": (KEY + "\u00e9").encode()},  # non-ASCII bytes: refused, not a 500
        {"Cookie": f"{COOKIE_NAME}={KEY}"},  # the key itself is not the cookie
    ]
    for headers in near:
        assert (await http.get("/debug/stats", headers=headers)).status_code == 401, headers
    assert (await http.get("/debug/stats", params={"key": KEY + "\u00e9"})).status_code == 401


async def test_without_a_configured_key_the_routes_are_open(monkeypatch):
    monkeypatch.delenv("VOXROUTE_API_KEY", raising=False)
    config = load_config()
    services = Services(config, None, None, {}, build_router(config), mode="emulated")  # type: ignore[arg-type]
    app = create_runtime_app(services, dev=True)
    async with serve_app(app) as url, httpx.AsyncClient(base_url=url, timeout=STEP) as http:
        assert (await http.get("/debug/stats")).status_code == 200
        assert (await http.get("/calls")).status_code == 200
        assert (await http.get("/metrics")).status_code == 200
