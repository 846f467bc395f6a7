"""A tenant's business tools as configured: HTTP tools and Python tools (config ``tools``).

Pure config models and the start-up work on them: a Python tool's ``module:function`` is imported
and its signature turned into an argument schema (pydantic) when the config is loaded, so a missing
module or a bad signature fails at start with the dotted path of the field (``ConfigError``).

HTTP tool URL templates take ``{argument}`` placeholders (URL-quoted); header values take
``${ENV_VAR}`` placeholders, filled from the environment at call time (secrets never live in the file).
"""

from __future__ import annotations

import functools
import importlib
import inspect
import os
import re
import string
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal, get_type_hints

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)

TOOL_NAME = r"^[A-Za-z_][A-Za-z0-9_-]{0,63}$"
ENV_PLACEHOLDER = re.compile(r"\$\{(\w+)(?::-([^}]*))?\}")  # ${VAR} or ${VAR:-default}
CONTEXT_PARAMETER = "context"  # a Python tool's parameter that receives the ToolContext (not the model's)


@dataclass(frozen=True, slots=True)
class ToolContext:
    """What a Python tool may want beside the model's arguments (its ``context`` parameter).

    ``idempotency_key`` is the same for every execution of the same call (call, turn, call index):
    a tool that changes something should use it to do so at most once."""

    idempotency_key: str
    call_sid: str
    turn: int
    tenant: str


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ToolConfig(_Model):
    """One business tool. ``kind: http`` takes ``method``, ``url``, ``headers`` and ``parameters`` (a
    JSON schema); ``kind: python`` takes ``function`` (``module:function``, its arguments' schema
    from the type hints). The rest applies to both."""

    kind: Literal["http", "python"]
    description: str = Field(min_length=1, max_length=1024)
    timeout_ms: int = Field(default=2000, gt=0, le=60_000)
    result_fields: list[str] | None = None  # the result's fields the model sees (dotted); None: all
    waiting_phrase: str | dict[str, str] | None = None  # said while the tool runs past the budget
    idempotent: bool = True  # safe to ask twice: a dropped connection is retried once (same key)
    stakes: Literal["low", "high"] = "low"  # high: the turn is answered by the reasoning tier
    # kind: http
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"] = "GET"
    url: str | None = Field(default=None, pattern=r"^https?://")  # {argument} placeholders
    headers: dict[str, str] = Field(default_factory=dict)  # ${ENV_VAR} or ${ENV_VAR:-default}
    parameters: dict[str, Any] | None = None
    # Replays (and tests): an ASGI app factory served on 127.0.0.1 in place of the url's host.
    stand_in: str | None = Field(default=None, pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
    # kind: python
    function: str | None = Field(default=None, pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")

    @field_validator("function")
    @classmethod
    def _importable(cls, ref: str | None) -> str | None:
        if ref is not None:
            load_function(ref)  # raises ValueError naming the problem: reported on this field
        return ref

    @model_validator(mode="after")
    def _kind(self) -> ToolConfig:
        if self.kind == "python":
            if self.function is None:
                raise ValueError("function: required for a python tool (module:function)")
            if self.url is not None or self.parameters is not None or self.headers:
                raise ValueError(
                    "a python tool takes no url, headers or parameters (its schema comes from the function)"
                )
            return self
        if self.function is not None:
            raise ValueError("function: only for kind python")
        if self.stand_in is not None:
            try:
                _import(self.stand_in)
            except ValueError as exc:
                raise ValueError(f"stand_in: {exc}") from None
        if self.url is None:
            raise ValueError("url: required for an http tool")
        params = self.parameters or {"type": "object", "properties": {}}
        if params.get("type") != "object" or not isinstance(params.get("properties", {}), dict):
            raise ValueError("parameters: must be a JSON schema of type object with properties")
        self.parameters = params
        for _, field_name, _, _ in string.Formatter().parse(self.url):
            if field_name and field_name not in params.get("properties", {}):
                raise ValueError(f"url: placeholder {{{field_name}}} is not in parameters.properties")
        return self

    def phrase_for(self, language: str) -> str | None:
        phrase = self.waiting_phrase
        if isinstance(phrase, dict):
            return phrase.get(language) or next(iter(phrase.values()), None)
        return phrase

    def arguments_schema(self) -> dict[str, Any]:
        """The JSON schema of the tool's arguments, as the model sees it. (Not ``schema``: that name is
        pydantic's deprecated class method, which this model would otherwise override.)"""
        if self.kind == "http":
            assert self.parameters is not None
            return self.parameters
        schema = self.args_model.model_json_schema()
        schema.pop("title", None)
        for prop in schema.get("properties", {}).values():
            prop.pop("title", None)
        return schema

    def secrets(self) -> list[str]:
        """The environment variables the headers read."""
        return sorted({m for v in self.headers.values() for m in ENV_PLACEHOLDER.findall(v)})

    @property
    def fn(self) -> Callable[..., Any]:
        assert self.function is not None
        return load_function(self.function)[0]

    @property
    def args_model(self) -> type[BaseModel]:
        assert self.function is not None
        return load_function(self.function)[1]

    @property
    def wants_context(self) -> bool:
        return self.function is not None and load_function(self.function)[2]


class ToolsConfig(_Model):
    """``tools``: the business tools of each tenant (tenant -> tool name -> tool), and how many tool
    rounds one turn may take before the model must answer without them."""

    max_rounds: int = Field(default=3, ge=1, le=10)
    tenants: dict[str, dict[Annotated[str, Field(pattern=TOOL_NAME)], ToolConfig]] = Field(
        default_factory=dict
    )

    def of(self, tenant: str) -> dict[str, ToolConfig]:
        return self.tenants.get(tenant, {})


@functools.cache
def load_function(ref: str) -> tuple[Callable[..., Any], type[BaseModel], bool]:
    """Import ``module:function`` (from the working directory or ``PYTHONPATH``) and derive its
    argument model from the type hints. Raises ValueError naming what is wrong."""
    fn = _import(ref)
    attr = ref.partition(":")[2]
    try:
        hints = get_type_hints(fn)
    except Exception as exc:  # a hint that does not resolve
        raise ValueError(f"{ref}: type hints do not resolve: {exc}") from None
    fields: dict[str, Any] = {}
    wants_context = False
    for name, p in inspect.signature(fn).parameters.items():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD, p.POSITIONAL_ONLY):
            raise ValueError(f"{ref}: parameter {name!r} must be a plain keyword parameter")
        if name == CONTEXT_PARAMETER:
            wants_context = True
            continue
        if name not in hints:
            raise ValueError(
                f"{ref}: parameter {name!r} has no type hint (the model's schema comes from them)"
            )
        default = ... if p.default is p.empty else p.default
        fields[name] = (hints[name], default)
    try:
        model = create_model(f"{attr}_args", __config__=ConfigDict(extra="forbid"), **fields)
        model.model_json_schema()
    except Exception as exc:
        raise ValueError(f"{ref}: arguments cannot be described as JSON schema: {exc}") from None
    return fn, model, wants_context


def _import(ref: str) -> Callable[..., Any]:
    """The callable named ``module:function`` (from the working directory or ``PYTHONPATH``)."""
    module_name, _, attr = ref.partition(":")
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.append(cwd)  # "loaded from the working directory", as `python -m` would
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"cannot import module {module_name!r}: {exc}") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ValueError(f"module {module_name!r} has no function {attr!r}")
    return fn


def fill_env(template: str) -> tuple[str, str | None]:
    """``template`` with its ``${VAR}`` / ``${VAR:-default}`` filled from the environment, and the
    first variable that is unset without a default (then the text is unusable)."""
    missing: list[str] = []

    def one(m: re.Match[str]) -> str:
        value = os.environ.get(m.group(1))
        if value is None:
            if m.group(2) is None:
                missing.append(m.group(1))
                return ""
            return m.group(2)
        return value

    text = ENV_PLACEHOLDER.sub(one, template)
    return text, missing[0] if missing else None


def openai_tool(name: str, tool: ToolConfig) -> dict[str, Any]:
    """The tool in the OpenAI ``tools`` format."""
    return {
        "type": "function",
        "function": {"name": name, "description": tool.description, "parameters": tool.arguments_schema()},
    }


def check_arguments(schema: dict[str, Any], args: dict[str, Any]) -> str | None:
    """A problem with ``args`` against an HTTP tool's schema (the subset tools use: required,
    property types, enum, no unknown properties unless allowed), or None."""
    props = schema.get("properties", {})
    for name in schema.get("required", []):
        if name not in args:
            return f"missing argument {name!r}"
    for name, value in args.items():
        spec = props.get(name)
        if spec is None:
            if schema.get("additionalProperties", True) is False:
                return f"unknown argument {name!r}"
            continue
        want = spec.get("type")
        if want and not _json_type_ok(value, want):
            return f"argument {name!r} must be {want}"
        if "enum" in spec and value not in spec["enum"]:
            return f"argument {name!r} must be one of {spec['enum']}"
    return None


_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "object": (dict,),
    "array": (list,),
    "null": (type(None),),
}


def _json_type_ok(value: Any, want: str | list[str]) -> bool:
    for t in [want] if isinstance(want, str) else want:
        types = _JSON_TYPES.get(t, (object,))
        if isinstance(value, bool) and t in ("integer", "number"):
            continue
        if isinstance(value, types):
            return True
    return False


def validate_python_args(tool: ToolConfig, args: dict[str, Any]) -> tuple[dict[str, Any] | None, str | None]:
    """(the arguments as the function takes them, None) or (None, the problem)."""
    try:
        model = tool.args_model.model_validate(args)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "arguments"
        return None, f"{where}: {err['msg']}"
    return {name: getattr(model, name) for name in type(model).model_fields}, None
