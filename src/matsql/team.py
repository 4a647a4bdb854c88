"""AGENTS.yaml: which backend and decoding settings each agent uses (the "team").

Example::

    defaults: {backend: local, model: qwen2.5-coder-0.5b-instruct, max_tokens: 256}
    agents:
      planner:  {temperature: 1.0, max_tokens: 384}
      val-sel:  {adapter: runs/study/sft/val-sel, temperature: 1.0}
      val-cond: {adapter: runs/study/sft/val-cond, temperature: 1.0}
      fixer:    {temperature: 0.0}
      selector: {temperature: 0.0, max_tokens: 8}

Keys other than decoding settings describe the backend and go to
:func:`matsql.backends.registry.make_backend`. Every key is checked: an unknown one (a typo like
``temprature``) is an error naming the file, the agent and the key, never silently ignored.
``stop`` is a list of stop strings, or one string (``stop: "```"`` is one stop string).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from matsql.records import AGENTS

DECODING_KEYS = ("temperature", "max_tokens", "stop", "n")
# teacher: the LLM teacher of `matsql train sft-data --teacher` (checked by matsql.labels.teacher)
TOP_KEYS = ("defaults", "agents", "teacher")


class TeamError(ValueError):
    """A bad agents file or adapter override; the message names the file and key (one line)."""


def backend_keys(kind: str) -> set[str] | None:
    """The keys a backend of this kind accepts (its config model's fields), or None for an
    unknown kind (``make_backend`` names it). Found from the registry's config classes, so a
    backend added there is validated here without a second list."""
    from pydantic import BaseModel

    from matsql.backends import registry

    for obj in vars(registry).values():
        if isinstance(obj, type) and issubclass(obj, BaseModel) and "backend" in obj.model_fields:
            field_ = obj.model_fields["backend"]
            if field_.default == kind or kind in getattr(field_.annotation, "__args__", ()):
                return set(obj.model_fields)
    return None


def _unknown_key_error(where: str, key: str, allowed: set[str]) -> TeamError:
    import difflib

    close = difflib.get_close_matches(key, sorted(allowed), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else f"; expected one of: {', '.join(sorted(allowed))}"
    return TeamError(f"{where}: unknown key {key!r}{hint}")


def _stop_list(value: Any, where: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    raise TeamError(f"{where}: 'stop' must be a string or a list of strings, got {value!r}")


@dataclass
class AgentSpec:
    name: str
    backend: dict[str, Any]
    temperature: float = 0.0
    max_tokens: int = 256
    stop: list[str] = field(default_factory=list)
    # what the model spec resolves to (hub id or GGUF file, quantization, sha256; see
    # matsql.models.describe_model): rollout headers carry it; outside the team digest
    weights: dict[str, Any] = field(default_factory=dict)

    def model_id(self) -> str:
        b = self.backend
        ident = str(b.get("model", "?"))
        if b.get("adapter"):
            ident += f"+{b['adapter']}"
        if b.get("base_url"):
            ident = f"{b['base_url']}/{ident}"
        return ident


@dataclass
class Team:
    agents: dict[str, AgentSpec]
    source: str = ""

    def __getitem__(self, name: str) -> AgentSpec:
        if name not in self.agents:
            raise KeyError(f"agent {name!r} is not configured in {self.source or 'AGENTS.yaml'}")
        return self.agents[name]

    def model_identities(self) -> dict[str, dict[str, str | None]]:
        """Per agent, the weights its model spec resolves to (hub id or GGUF file, quantization,
        sha256; see :func:`matsql.models.describe_model`), for run headers."""
        from matsql.models import describe_model

        out: dict[str, dict[str, str | None]] = {}
        for name, spec in self.agents.items():
            b = spec.backend
            if b.get("backend", "local") in ("local", "vllm") and b.get("model"):
                out[name] = describe_model(str(b["model"])) | {
                    "adapter": b.get("adapter"),
                    "engine": str(b.get("backend", "local")),
                }
            else:
                out[name] = {
                    "spec": str(b.get("model")),
                    "backend": str(b.get("backend")),
                    "source": b.get("base_url"),
                }
        return out

    def model_banner(self, identities: dict[str, dict[str, str | None]] | None = None) -> list[str]:
        """One line per distinct model for a run's log (agents that differ only in their adapter
        share a line): loud when quantized weights stand in for a hub id. ``identities``:
        ``model_identities()`` when the caller has it already."""
        lines = []
        for ident in (identities if identities is not None else self.model_identities()).values():
            if ident.get("kind") == "gguf":
                line = (
                    f"model {ident['spec']}: {ident['file']} ({ident.get('quantization') or 'quantized'} GGUF, "
                    f"dequantized on load; sha256 {ident.get('sha256')})"
                )
                if ident.get("substitute_for"):
                    line = (
                        f"SUBSTITUTED: {line}, standing in for the hub weights of {ident['substitute_for']}"
                    )
            else:
                line = f"model {ident.get('spec')}: {ident.get('model', ident.get('spec'))} ({ident.get('source')})"
            lines.append(line)
        return list(dict.fromkeys(lines))

    def digest(self) -> str:
        agents = {
            k: {f: x for f, x in vars(v).items() if f != "weights"} for k, v in sorted(self.agents.items())
        }
        blob = json.dumps(agents, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def parse_team(data: dict[str, Any], source: str = "", base_dir: Path | None = None) -> Team:
    src = source or "AGENTS.yaml"
    if not isinstance(data, dict) or "agents" not in data:
        raise TeamError(f"{src}: expected a mapping with an 'agents' key")
    for key in data:
        if key not in TOP_KEYS:
            raise _unknown_key_error(src, str(key), set(TOP_KEYS))
    defaults = dict(data.get("defaults") or {})
    agents: dict[str, AgentSpec] = {}
    for name, raw in (data["agents"] or {}).items():
        if name not in AGENTS:
            raise TeamError(f"{src}: unknown agent {name!r}; expected one of {AGENTS}")
        if raw is not None and not isinstance(raw, dict):
            raise TeamError(f"{src}: agents.{name} must be a mapping, got {raw!r:.60}")
        merged = {**defaults, **(raw or {})}
        allowed = backend_keys(str(merged.get("backend", "local")))
        if allowed is not None:
            allowed |= set(DECODING_KEYS)
            for key in merged:
                if key not in allowed:
                    where = f"{src}: agents.{name}" if key in (raw or {}) else f"{src}: defaults"
                    raise _unknown_key_error(where, str(key), allowed)
        decoding = {k: merged.pop(k) for k in DECODING_KEYS if k in merged}
        for key in ("adapter", "model"):
            v = merged.get(key)
            if base_dir is not None and isinstance(v, str) and v.startswith(("./", "../")):
                merged[key] = str((base_dir / v).resolve())
        agents[name] = AgentSpec(
            name=name,
            backend=merged,
            temperature=float(decoding.get("temperature", 0.0)),
            max_tokens=int(decoding.get("max_tokens", 256)),
            stop=_stop_list(decoding.get("stop"), f"{src}: agents.{name}"),
        )
        if merged.get("backend", "local") == "local" and merged.get("model"):
            from matsql.models import describe_model

            agents[name].weights = describe_model(str(merged["model"]))
    return Team(agents=agents, source=source)


def load_team(path: str | Path) -> Team:
    from matsql.fileio import read_yaml

    path = Path(path)
    data = read_yaml(path, "agents file", ValueError, missing=FileNotFoundError)
    return parse_team(data, source=str(path), base_dir=path.parent)


def apply_adapters(team: Team, overrides: list[str]) -> Team:
    """Apply ``AGENT=PATH`` adapter overrides (how study arms differ: validators only)."""
    for item in overrides:
        if "=" not in item:
            raise TeamError(f"--adapter expects AGENT=PATH, got {item!r}")
        name, path = item.split("=", 1)
        spec = team[name]
        spec.backend = {**spec.backend, "adapter": path or None}
    return team
