"""Prompt templates are data (``templates/<agent>.yaml``); this module loads and fills them."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

import yaml

from matsql.backends.base import ChatPrompt


@dataclass(frozen=True)
class Template:
    name: str
    version: int
    system: str
    user: str
    prefix: str
    extra: dict[str, Any]

    def prompt(self, **fields: str) -> ChatPrompt:
        messages = []
        if self.system:
            messages.append({"role": "system", "content": self.system})
        messages.append({"role": "user", "content": self.user.format(**fields)})
        return ChatPrompt.of(messages, self.prefix)


@cache
def load_template(name: str) -> Template:
    """Load ``templates/<name>.yaml`` shipped with the package."""
    path = resources.files("matsql.agents").joinpath("templates", f"{name}.yaml")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise ValueError(f"no prompt template for agent {name!r} ({path})") from e
    known = {"version", "system", "user", "prefix"}
    return Template(
        name=name,
        version=int(data.get("version", 1)),
        system=data.get("system", ""),
        user=data["user"],
        prefix=data.get("prefix", ""),
        extra={k: v for k, v in data.items() if k not in known},
    )
