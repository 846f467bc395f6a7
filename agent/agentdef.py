"""The agent of each tenant: its system prompt, greeting, voices, languages and knowledge.

A tenant's ``agent:`` section (``TenantAgentConfig`` in agent/config.py) overrides the shared
``agent:`` section. The system prompt and the greeting are templates over a fixed set of fields
(:data:`TEMPLATE_FIELDS`): the tenant, the local time and date in the tenant's time zone, the caller's
number masked to its last four digits, and the conversation's language. The knowledge file (markdown)
is read once, at start, capped at ``knowledge_max_bytes``, and added to the prompt under a heading.

Every problem is found when the config loads and named by its dotted field
(``tenants.retail.agent.knowledge_file: ...``): an unknown template field, a missing or oversized
knowledge file, an unknown time zone, a greeting or voice for a language the tenant does not speak.
"""

from __future__ import annotations

import string
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from voxroute.agent.calllog.redact import mask_number

if TYPE_CHECKING:
    from voxroute.agent.config import Config

TEMPLATE_FIELDS = ("tenant", "local_time", "local_date", "caller", "language")
KNOWLEDGE_HEADING = "## What you know about this business\n\n"


def template_problems(text: str) -> list[str]:
    """Why ``text`` is not a usable prompt template (empty: it is)."""
    try:
        names = [name for _, name, _, _ in string.Formatter().parse(text) if name is not None]
    except ValueError as exc:  # a lone "{" or "}"
        return [f"not a valid template ({exc}); write {{{{ and }}}} for literal braces"]
    return [
        f"unknown template field {{{name}}}; known: {', '.join('{' + f + '}' for f in TEMPLATE_FIELDS)}"
        for name in dict.fromkeys(names)
        if name not in TEMPLATE_FIELDS
    ]


def read_knowledge(path: Path, max_bytes: int) -> str:
    """The knowledge file's text; ``ValueError`` saying what is wrong (missing, too big, not UTF-8)."""
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise ValueError(f"{path} is {size} bytes, over knowledge_max_bytes ({max_bytes})")
        return path.read_bytes()[:max_bytes].decode("utf-8").strip()
    except FileNotFoundError:
        raise ValueError(f"no such file: {path}") from None
    except IsADirectoryError:
        raise ValueError(f"{path} is a folder, not a markdown file") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not UTF-8 text") from None
    except OSError as exc:
        raise ValueError(f"{path}: {exc.strerror or exc}") from None


@dataclass(frozen=True)
class AgentDef:
    """One tenant's agent, resolved: the shared defaults filled in, the knowledge read."""

    tenant: str
    system_prompt: str  # a template
    greeting: dict[str, str] = field(default_factory=dict)  # language -> template ("*": any language)
    voices: dict[str, str] = field(default_factory=dict)  # language -> TTS speaker
    languages: tuple[str, ...] = ()
    knowledge: str = ""
    timezone: str = "Asia/Kolkata"

    def fields(self, language: str, caller: str | None, now: datetime | None = None) -> dict[str, str]:
        local = (now or datetime.now(ZoneInfo("UTC"))).astimezone(ZoneInfo(self.timezone))
        return {
            "tenant": self.tenant,
            "local_time": local.strftime("%H:%M"),
            "local_date": local.strftime("%A %d %B %Y"),
            "caller": mask_number(caller) if caller else "unknown",
            "language": language,
        }

    def prompt(self, language: str, caller: str | None = None, now: datetime | None = None) -> str:
        """The system prompt of one conversation, with the knowledge after it."""
        text = self.system_prompt.format_map(self.fields(language, caller, now))
        if self.knowledge:
            text = f"{text}\n\n{KNOWLEDGE_HEADING}{self.knowledge}"
        return text

    def greeting_text(
        self, language: str, caller: str | None = None, now: datetime | None = None
    ) -> str | None:
        """What the agent says first in ``language``; None: the caller speaks first."""
        template = (
            self.greeting.get(language) or self.greeting.get(language.split("-")[0]) or self.greeting.get("*")
        )
        if not template:
            return None
        return template.format_map(self.fields(language, caller, now))

    def voice(self, language: str) -> str | None:
        """The tenant's TTS speaker for ``language``; None: the provider's default for it."""
        return self.voices.get(language)


def build_agents(config: Config, base_dir: Path | None = None) -> tuple[dict[str, AgentDef], list[str]]:
    """Every tenant's agent, and the problems found (each naming its dotted field). Relative knowledge
    files are found from ``base_dir`` (the config file's folder; default: the working directory)."""
    shared = config.agent
    agents: dict[str, AgentDef] = {}
    problems: list[str] = []
    for name, tenant in config.tenants.items():
        own = tenant.agent
        where = f"tenants.{name}.agent"
        prompt = own.system_prompt if own.system_prompt is not None else shared.system_prompt
        problems += [f"{where}.system_prompt: {p}" for p in template_problems(prompt)]
        raw_greeting = own.greeting if own.greeting is not None else shared.greeting
        if isinstance(raw_greeting, dict):
            greeting = {lang: text for lang, text in raw_greeting.items() if text}
        else:
            greeting = {"*": raw_greeting} if raw_greeting else {}
        for lang, text in greeting.items():
            field_name = f"{where}.greeting" + ("" if lang == "*" else f".{lang}")
            problems += [f"{field_name}: {p}" for p in template_problems(text)]
            if lang != "*" and lang not in tenant.languages:
                problems.append(f"{field_name}: {lang} is not one of the tenant's languages")
        for lang in own.voices:
            if lang not in tenant.languages:
                problems.append(f"{where}.voices.{lang}: {lang} is not one of the tenant's languages")
        try:
            ZoneInfo(own.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            problems.append(f"{where}.timezone: unknown time zone {own.timezone!r}")
            continue
        knowledge = ""
        if own.knowledge_file:
            path = Path(own.knowledge_file)
            if not path.is_absolute() and base_dir is not None:
                path = base_dir / path
            try:
                knowledge = read_knowledge(path, own.knowledge_max_bytes)
            except ValueError as exc:
                problems.append(f"{where}.knowledge_file: {exc}")
        agents[name] = AgentDef(
            tenant=name,
            system_prompt=prompt,
            greeting=greeting,
            voices=dict(own.voices),
            languages=tuple(tenant.languages),
            knowledge=knowledge,
            timezone=own.timezone,
        )
    return agents, problems
