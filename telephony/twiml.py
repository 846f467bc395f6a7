"""TwiML for a bidirectional media stream, and Twilio request signatures.

Twilio signs every webhook and the media-stream websocket upgrade with ``X-Twilio-Signature``
over the URL *it* requested (docs/reference/telephony.md §1.7). Behind TLS termination the app sees
``http://10.0.0.5:8000/...``, so URLs are rebuilt from a configured public base, never from
the request's own scheme and host.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from urllib.parse import urlsplit, urlunsplit

from twilio.request_validator import RequestValidator, get_signature_algorithm
from twilio.twiml.voice_response import Connect, Stream, VoiceResponse

SIGNATURE_HEADER = "X-Twilio-Signature"
SIGNATURE_SETTINGS_HEADER = "X-Twilio-Webhooks-Signature-Settings"


def connect_stream_twiml(
    stream_url: str,
    parameters: Mapping[str, str],
    action_url: str | None = None,
    status_callback: str | None = None,
) -> str:
    """``<Response><Connect><Stream url=...><Parameter .../>...`` as an XML string.

    ``stream_url`` must be ``wss://`` without a query string (Twilio drops query strings);
    per-call data goes in ``parameters`` and comes back in ``start.customParameters``.
    """
    parts = urlsplit(stream_url)
    if parts.scheme not in ("wss", "ws"):
        raise ValueError(f"stream URL must be wss:// (Twilio error 31922), got {stream_url!r}")
    if parts.query:
        raise ValueError(f"Twilio drops query strings from <Stream url>: use parameters, got {stream_url!r}")
    response = VoiceResponse()
    connect = Connect(action=action_url) if action_url else Connect()
    stream = Stream(url=stream_url, status_callback=status_callback or None)  # None: no attribute
    for name, value in parameters.items():
        stream.parameter(name=name, value=value)
    connect.append(stream)
    response.append(connect)
    return str(response)


def validate_signature(
    auth_token: str,
    url: str,
    params_or_body: Mapping[str, str] | str | None,
    signature: str | None,
    *,
    signature_settings: str | None = None,
) -> bool:
    """Check ``X-Twilio-Signature`` for ``url`` as Twilio requested it.

    ``params_or_body``: the form parameters of a POST (a dict, or a multi-dict with ``getlist``),
    ``None``/``{}`` for the websocket upgrade, or the raw body string of a JSON webhook (its hash
    is in the ``bodySHA256`` query parameter). ``signature_settings`` is the
    ``X-Twilio-Webhooks-Signature-Settings`` header, when a Webhooks Rule signs with HMAC-SHA256.
    """
    if not signature or not auth_token:
        return False
    algorithm = get_signature_algorithm(signature_settings)
    try:
        return RequestValidator(auth_token).validate(
            url, params_or_body or {}, signature, algorithm=algorithm
        )
    except (ValueError, TypeError, UnicodeError):  # a hostile URL or parameter the SDK cannot hash
        return False


def public_url(public_base_url: str, path: str, query: str = "") -> str:
    """The URL Twilio requested: configured public base + request path (+ query string)."""
    base = urlsplit(public_base_url)
    if base.scheme not in ("https", "http") or not base.netloc:
        raise ValueError(f"public base URL must be http(s)://host[:port][/prefix], got {public_base_url!r}")
    prefix = base.path.rstrip("/")
    if not path.startswith("/"):
        path = "/" + path
    return urlunsplit((base.scheme, base.netloc, prefix + path, query, ""))


def public_ws_url(public_base_url: str, path: str, query: str = "") -> str:
    """The websocket form of :func:`public_url`: ``https`` -> ``wss``, ``http`` -> ``ws``."""
    url = public_url(public_base_url, path, query)
    return ("wss" + url[5:]) if url.startswith("https") else ("ws" + url[4:])


def call_token(auth_token: str, call_sid: str) -> str:
    """A per-call HMAC put in a ``<Parameter>``: proves a ``start`` belongs to a call we answered."""
    mac = hmac.new(
        auth_token.encode(), b"voxroute-stream:" + call_sid.encode("utf-8", "surrogatepass"), hashlib.sha256
    )
    return mac.hexdigest()[:32]


def check_call_token(auth_token: str, call_sid: str, token: str | None) -> bool:
    if not isinstance(token, str):
        return False
    expected = call_token(auth_token, call_sid).encode()
    return hmac.compare_digest(expected, token.encode("utf-8", "surrogatepass"))
