"""The configuration reference, generated from the code: ``python -m voxroute.agent.configdoc > docs/config.md``.

Two parts:

- every field of the config file (the pydantic models of :mod:`voxroute.agent.config` and the models it
  includes from ``routing`` and ``voxroute.agent.tools``): its path, type, default, bounds and the comment the
  code gives it (a ``description``, else the comment on the field's line);
- every environment variable the code reads, found by reading the source (``os.environ``/``env``
  look-ups, names assigned to ``*_ENV`` constants, ``VOXROUTE_*`` literals, the defaults of the config's
  ``*_env`` fields), each with the description in :data:`ENV_DOCS`.

``tests/test_configdoc.py`` fails when docs/config.md differs from this output, or when the code
reads a variable :data:`ENV_DOCS` does not describe: CI keeps the page true.
"""

from __future__ import annotations

import ast
import inspect
import io
import re
import sys
import tokenize
import types
import typing
from pathlib import Path

from pydantic import BaseModel

from voxroute.agent.config import Config

ROOT = Path(__file__).resolve().parent.parent
SOURCE_DIRS = ("voxroute", "agent", "telephony", "routing", "emulators")

# What each environment variable is for. A variable the code reads that is missing here fails
# tests/test_configdoc.py: describe it in the same change that reads it.
ENV_DOCS: dict[str, str] = {
    "VOXROUTE_CONFIG": "The config file when `--config` is not given (default `examples/default.yaml`).",
    "VOXROUTE_API_KEY": "The operator key: the call API, call pages, /debug and /metrics ask for it "
    "(`handoff.operator_api_key_env`). Required by `voxroute serve` unless `--dev`.",
    "VOXROUTE_WEBHOOK_SECRET": "Signing secret of the handoff webhook (`handoff.webhook_secret_env`): "
    "`whsec_<base64>` as Standard Webhooks libraries take it. Required when `handoff.webhook_url` is set.",
    "VOXROUTE_DATA_DIR": "Directory of the SQLite call log, its spill file and the caller salt "
    "(default `data`).",
    "VOXROUTE_DATABASE_URL": "The call log database (`postgresql://...` or `sqlite:///...`); "
    "default SQLite in `$VOXROUTE_DATA_DIR`.",
    "VOXROUTE_CALLER_SALT": "Salt of the caller-number hash in the call log. Default: a random salt "
    "created once in the data directory. Required by `serve` whenever `VOXROUTE_DATABASE_URL` is set "
    "(every host of that database must hash a caller alike, or repeat contacts do not match).",
    "VOXROUTE_FIXTURES": "Directory of fixture calls (`name.json` + audio) that `replay` and `demo` "
    "find by name (default `fixtures/audio` of the source tree).",
    "VOXROUTE_CHAT_KEY_<TENANT>": "A tenant's key for the chat completions endpoint, when its "
    "`chat.api_key_env` is not set (tenant name upper-cased).",
    "VOXROUTE_SIP_PASSWORD": "Password of the SIP registration (`sip.registration.password_env`).",
    "VOXROUTE_SIP_URL": "Tests and `replay --carrier sip`: a SIP peer to dial instead of the built-in one.",
    "SARVAM_API_KEY": "Sarvam AI key (`sarvam.api_key_env`, and the `sarvam` LLM provider in the "
    "examples). Without it the emulator or the local stack stands in (`--dev`).",
    "OPENROUTER_API_KEY": "OpenRouter key, named by the examples' `providers.openrouter.api_key_env`.",
    "TWILIO_AUTH_TOKEN": "Twilio auth token: webhook and media stream signatures "
    "(`telephony.twilio_auth_token_env`).",
    "TWILIO_ACCOUNT_SID": "Twilio account SID for the REST transfer of a handoff "
    "(`handoff.twilio_account_sid_env`).",
    "EXOTEL_STREAM_CREDENTIALS": "Exotel `KEY:TOKEN`, Basic auth on the stream upgrade "
    "(`telephony.exotel_credentials_env`).",
    "EXOTEL_ALLOWED_NETWORKS": "Comma-separated networks (CIDR) Exotel streams may come from.",
    "FORWARDED_ALLOW_IPS": "Comma-separated addresses or networks of the reverse proxies trusted to "
    "name the client in `X-Forwarded-For` (`*`: every peer; default `127.0.0.1`): uvicorn's setting, "
    "applied alike on `telephony.media_port`.",
    "EXOTEL_SAMPLE_RATE": "Exotel stream sample rate: 8000, 16000 or 24000 (default 8000).",
    "PLIVO_AUTH_ID": "Plivo auth ID for the REST transfer of a handoff (`telephony.plivo_auth_id_env`).",
    "PLIVO_AUTH_TOKEN": "Plivo auth token: webhook signatures, stream tokens, REST "
    "(`telephony.plivo_auth_token_env`).",
    "PLIVO_CONTENT_TYPE": "Plivo stream audio format (default `audio/x-l16;rate=8000`).",
    "TELNYX_API_KEY": "Telnyx API key for the call control of a handoff (`telephony.telnyx_api_key_env`).",
    "TELNYX_PUBLIC_KEY": "Telnyx public key (base64 Ed25519) for webhook signatures "
    "(`telephony.telnyx_public_key_env`).",
    "TELNYX_STREAM_SECRET": "Our HMAC key for Telnyx per-call stream tokens "
    "(`telephony.telnyx_stream_secret_env`).",
    "TELNYX_CODEC": "Telnyx stream codec (default `PCMU`).",
    "TELNYX_SAMPLE_RATE": "Telnyx stream sample rate (default 8000).",
    "OTEL_EXPORTER_OTLP_ENDPOINT": "OpenTelemetry collector (OTLP/HTTP, e.g. `http://collector:4318`): "
    "with the `otel` extra, call and turn spans are exported there (agent/tracing.py).",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "The same for traces only (the full URL, `.../v1/traces`).",
    "OTEL_SERVICE_NAME": "The service name on exported spans (default `voxroute`).",
}


# ---------------------------------------------------------------- config fields


def _type_name(annotation) -> str:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        return _type_name(args[0])
    if origin is typing.Literal:
        return " \\| ".join(repr(a).replace("'", '"') for a in args)
    if origin in (typing.Union, types.UnionType):
        return " \\| ".join(_type_name(a) for a in args)
    if origin is not None:
        name = getattr(origin, "__name__", str(origin))
        return f"{name}[{', '.join(_type_name(a) for a in args)}]"
    if annotation is type(None):
        return "null"
    return getattr(annotation, "__name__", str(annotation))


def _default(field) -> str:
    if field.is_required():
        return "**required**"
    value = field.get_default(call_default_factory=True)
    if isinstance(value, BaseModel):
        return "(section)"
    text = "null" if value is None else repr(value) if not isinstance(value, bool) else str(value).lower()
    text = text.replace("\n", " ")
    if len(text) > 60:
        text = text[:57] + "..."
    return f"`{text}`".replace("|", "\\|")


def _bounds(field) -> str:
    parts = []
    for meta in field.metadata:
        for attr, sign in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<"), ("multiple_of", "multiple of"),
                           ("min_length", "min length"), ("max_length", "max length"), ("pattern", "pattern")):  # fmt: skip
            value = getattr(meta, attr, None)
            if value is not None:
                parts.append(f"{sign} `{value}`" if attr == "pattern" else f"{sign} {value}")
    return ", ".join(parts).replace("|", "\\|")


def _field_comments(model: type[BaseModel]) -> dict[str, str]:
    """The comment on each field's line(s) in the model's source, by field name."""
    try:
        source = inspect.getsource(model)
    except (OSError, TypeError):
        return {}
    lines = source.splitlines()
    starts: dict[int, str] = {}
    for number, line in enumerate(lines, 1):
        if m := re.match(r"^    (\w+)\s*:", line):
            starts[number] = m.group(1)
    comments: dict[str, list[str]] = {}
    current = None
    tokens = tokenize.generate_tokens(io.StringIO(source).readline)
    for tok in tokens:
        row = tok.start[0]
        if row in starts:
            current = starts[row]
        elif current and tok.type == tokenize.NL and tok.start[1] == 0:
            current = None
        if tok.type == tokenize.COMMENT and current and not tok.string.startswith("# fmt"):
            if lines[row - 1].lstrip().startswith("#"):
                continue  # a comment line of its own says why, about what follows
            comments.setdefault(current, []).append(tok.string.lstrip("#").strip())
    return {name: " ".join(text) for name, text in comments.items()}


def _submodels(annotation) -> list[tuple[str, type[BaseModel]]]:
    """Models reachable from a field's type, with the path suffix to reach them."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [("", annotation)]
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is dict and len(args) == 2:
        return [(".<name>" + s, m) for s, m in _submodels(args[1])]
    if origin is list and args:
        return [("[]" + s, m) for s, m in _submodels(args[0])]
    if origin in (typing.Union, types.UnionType):
        return [found for a in args for found in _submodels(a)]
    return []


def config_sections(
    model: type[BaseModel] = Config, prefix: str = ""
) -> list[tuple[str, str, list[list[str]]]]:
    """(path, description, rows of (field, type, default, bounds, meaning)) for ``model`` and below."""
    comments = _field_comments(model)
    rows, below = [], []
    for name, field in model.model_fields.items():
        path = f"{prefix}{name}"
        meaning = field.description or comments.get(name, "")
        rows.append([f"`{name}`", _type_name(field.annotation).replace("|", "\\|").replace("\\\\|", "\\|"),
                     _default(field), _bounds(field), meaning.replace("|", "\\|")])  # fmt: skip
        for suffix, sub in _submodels(field.annotation):
            below.extend(config_sections(sub, f"{path}{suffix}."))
    doc = inspect.cleandoc(model.__doc__ or "").split("\n\n")[0].replace("\n", " ").replace("``", "`")
    if doc.startswith(model.__name__ + "("):  # pydantic's generated signature, not a description
        doc = ""
    return [(prefix.rstrip(".") or "(top level)", doc, rows), *below]


# ---------------------------------------------------------------- environment variables

_ENV_NAME = re.compile(r"^[A-Z][A-Z0-9]*(_[A-Z0-9]+)+_?$")


def _is_environ(node: ast.AST) -> bool:
    if isinstance(node, ast.Attribute):
        return node.attr == "environ"
    return isinstance(node, ast.Name) and node.id in ("environ", "env")


def _str(node: ast.AST | None) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str) and _ENV_NAME.match(node.value):
        return node.value
    return None


def _names_in_source(tree: ast.AST) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and node.args:
            func = node.func
            if (isinstance(func, ast.Attribute) and func.attr in ("get", "pop") and _is_environ(func.value)) or (
                isinstance(func, ast.Attribute | ast.Name) and getattr(func, "attr", getattr(func, "id", "")) == "getenv"
            ):  # fmt: skip
                found.add(_str(node.args[0]) or "")
        elif isinstance(node, ast.Subscript) and _is_environ(node.value):
            found.add(_str(node.slice) or "")
        elif isinstance(node, ast.Compare) and any(_is_environ(c) for c in node.comparators):
            found.add(_str(node.left) or "")
        elif isinstance(node, ast.Assign):
            targets = [t for tgt in node.targets for t in (tgt.elts if isinstance(tgt, ast.Tuple) else [tgt])]
            values = node.value.elts if isinstance(node.value, ast.Tuple) else [node.value]
            for target, value in zip(targets, values, strict=False):
                name = getattr(target, "id", "")
                if name.endswith("_ENV"):
                    if isinstance(value, ast.Dict):
                        found.update(_str(v) or "" for v in value.values)
                    else:
                        found.add(_str(value) or "")
        elif (name := _str(node)) and name.startswith("VOXROUTE_"):
            found.add(name + "<TENANT>" if name.endswith("_") else name)
    found.discard("")
    return found


def _config_env_defaults(model: type[BaseModel] = Config, seen: set | None = None) -> set[str]:
    seen = set() if seen is None else seen
    if model in seen:
        return set()
    seen.add(model)
    found = set()
    for name, field in model.model_fields.items():
        if name.endswith("_env") and isinstance(field.default, str) and _ENV_NAME.match(field.default):
            found.add(field.default)
        for _, sub in _submodels(field.annotation):
            found |= _config_env_defaults(sub, seen)
    return found


def env_reads(root: Path = ROOT) -> dict[str, list[str]]:
    """Every environment variable the code reads -> the source files that name it."""
    where: dict[str, set[str]] = {}
    for directory in SOURCE_DIRS:
        for path in sorted((root / directory).rglob("*.py")):
            if "migrations" in path.parts or path == Path(__file__).resolve():
                continue
            rel = path.relative_to(root).as_posix()
            for name in _names_in_source(ast.parse(path.read_text(), str(path))):
                where.setdefault(name, set()).add(rel)
    for name in _config_env_defaults():
        where.setdefault(name, set()).add("agent/config.py")
    return {name: sorted(files) for name, files in sorted(where.items())}


# ---------------------------------------------------------------- the page


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
        *("| " + " | ".join(cell.strip() for cell in row) + " |" for row in rows),
    ]


def render() -> str:
    reads = env_reads()
    undocumented = sorted(set(reads) - set(ENV_DOCS))
    if undocumented:
        raise SystemExit(f"environment variables read without a description in ENV_DOCS: {undocumented}")
    out = [
        "# Configuration reference",
        "",
        "<!-- Generated by `python -m voxroute.agent.configdoc > docs/config.md`; do not edit by hand. -->",
        "<!-- tests/test_configdoc.py fails when this page and the code disagree. -->",
        "",
        "voxroute reads one YAML file (`--config`, else `$VOXROUTE_CONFIG`, else `examples/default.yaml`), "
        "validated by the pydantic models in `agent/config.py`; a bad field fails at start with its path. "
        "Secrets never live in the file: fields ending in `_env` name the environment variable that holds one.",
        "",
        "## Environment variables",
        "",
        *_table(
            ["variable", "what it is", "read in"],
            [
                [
                    f"`{name}`",
                    ENV_DOCS[name],
                    ", ".join(f"`{f}`" for f in reads.get(name, [])) or "(config examples)",
                ]
                for name in sorted(ENV_DOCS)
            ],
        ),
        "",
        "## Config file fields",
        "",
        "`<name>`: a key of your choosing (a tenant, a provider, a model path); `[]`: each item of a list.",
    ]
    for path, doc, rows in config_sections():
        out += ["", f"### `{path}`" if path != "(top level)" else "### (top level)", ""]
        if doc:
            out += [doc, ""]
        out += _table(["field", "type", "default", "bounds", "meaning"], rows)
    return "\n".join(out) + "\n"


def main() -> None:
    sys.stdout.write(render())


if __name__ == "__main__":
    main()
