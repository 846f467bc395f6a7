"""HTTP digest authentication for SIP (RFC 2617, RFC 7616 MD5 and SHA-256; RFC 3261 §22), sans-I/O.

A trunk answers our REGISTER (or INVITE) with 401/407 and a ``WWW-Authenticate`` /
``Proxy-Authenticate`` challenge; :func:`authorization` computes the header value to retry with.
:func:`check_authorization` is the server side (our tests' registrar uses it).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from voxroute.telephony.sip.message import SipParseError

_HASHES = {
    "MD5": hashlib.md5,
    "SHA-256": hashlib.sha256,
    "MD5-SESS": hashlib.md5,
    "SHA-256-SESS": hashlib.sha256,
}


@dataclass(frozen=True, slots=True)
class Challenge:
    realm: str
    nonce: str
    algorithm: str = "MD5"
    qop: tuple[str, ...] = ()
    opaque: str | None = None
    stale: bool = False


def parse_auth_params(value: str) -> tuple[str, dict[str, str]]:
    """``Digest realm="x", nonce="y", qop="auth,auth-int"`` -> ("digest", {...})."""
    scheme, _, rest = value.strip().partition(" ")
    params: dict[str, str] = {}
    i, n = 0, len(rest)
    while i < n:
        while i < n and rest[i] in " ,\t":
            i += 1
        eq = rest.find("=", i)
        if eq < 0:
            break
        name = rest[i:eq].strip().lower()
        i = eq + 1
        while i < n and rest[i] == " ":
            i += 1
        if i < n and rest[i] == '"':
            j = i + 1
            buf = []
            while j < n and rest[j] != '"':
                if rest[j] == "\\" and j + 1 < n:
                    j += 1
                buf.append(rest[j])
                j += 1
            if j >= n:
                raise SipParseError("unterminated quoted string in an auth header")
            params[name] = "".join(buf)
            i = j + 1
        else:
            j = rest.find(",", i)
            j = n if j < 0 else j
            params[name] = rest[i:j].strip()
            i = j
    return scheme.lower(), params


def parse_challenge(value: str) -> Challenge:
    scheme, p = parse_auth_params(value)
    if scheme != "digest":
        raise SipParseError(f"unsupported auth scheme {scheme!r}")
    if "realm" not in p or "nonce" not in p:
        raise SipParseError("digest challenge without realm or nonce")
    algorithm = p.get("algorithm", "MD5").upper()
    if algorithm not in _HASHES:
        raise SipParseError(f"unsupported digest algorithm {algorithm!r}")
    qop = tuple(q.strip().lower() for q in p.get("qop", "").split(",") if q.strip())
    return Challenge(
        p["realm"], p["nonce"], algorithm, qop, p.get("opaque"), p.get("stale", "").lower() == "true"
    )


def _h(algorithm: str, text: str) -> str:
    return _HASHES[algorithm](text.encode("utf-8")).hexdigest()


def digest_response(
    ch: Challenge,
    method: str,
    uri: str,
    username: str,
    password: str,
    *,
    cnonce: str = "",
    nc: int = 1,
    qop: str | None = None,
) -> str:
    ha1 = _h(ch.algorithm, f"{username}:{ch.realm}:{password}")
    if ch.algorithm.endswith("-SESS"):
        ha1 = _h(ch.algorithm, f"{ha1}:{ch.nonce}:{cnonce}")
    ha2 = _h(ch.algorithm, f"{method}:{uri}")
    if qop:
        return _h(ch.algorithm, f"{ha1}:{ch.nonce}:{nc:08x}:{cnonce}:{qop}:{ha2}")
    return _h(ch.algorithm, f"{ha1}:{ch.nonce}:{ha2}")


def authorization(
    ch: Challenge,
    method: str,
    uri: str,
    username: str,
    password: str,
    *,
    nc: int = 1,
    cnonce: str | None = None,
) -> str:
    """The ``Authorization`` / ``Proxy-Authorization`` value answering ``ch``."""
    qop = "auth" if "auth" in ch.qop else None
    cnonce = cnonce or secrets.token_hex(8)
    resp = digest_response(ch, method, uri, username, password, cnonce=cnonce, nc=nc, qop=qop)
    parts = [
        f'username="{username}"',
        f'realm="{ch.realm}"',
        f'nonce="{ch.nonce}"',
        f'uri="{uri}"',
        f'response="{resp}"',
        f"algorithm={ch.algorithm}",
    ]
    if qop:
        parts += [f"qop={qop}", f"nc={nc:08x}", f'cnonce="{cnonce}"']
    if ch.opaque is not None:
        parts.append(f'opaque="{ch.opaque}"')
    return "Digest " + ", ".join(parts)


def check_authorization(
    value: str, method: str, realm: str, nonce: str, passwords: dict[str, str]
) -> str | None:
    """Server side: the authenticated username, or None."""
    try:
        scheme, p = parse_auth_params(value)
    except SipParseError:
        return None
    user = p.get("username")
    if scheme != "digest" or user not in passwords or p.get("realm") != realm or p.get("nonce") != nonce:
        return None
    algorithm = p.get("algorithm", "MD5").upper()
    if algorithm not in _HASHES or "uri" not in p or "response" not in p:
        return None
    qop = p.get("qop") or None
    try:
        nc = int(p.get("nc", "1"), 16)
    except ValueError:
        return None
    ch = Challenge(realm, nonce, algorithm, (qop,) if qop else ())
    want = digest_response(
        ch, method, p["uri"], user, passwords[user], cnonce=p.get("cnonce", ""), nc=nc, qop=qop
    )
    # as bytes: compare_digest refuses str with non-ASCII characters (TypeError), and these are the peer's
    return user if hmac.compare_digest(want.encode(), p["response"].encode()) else None
