"""Training data: read sources, normalise rows, mix by weight, hold out an eval split, hash.

Accepted row formats (one source may use any of them, consistently):

- SFT, TRL conversational prompt-completion: ``prompt`` (messages up to the user turn),
  ``completion`` (one assistant message), optional ``prefix`` (the part of the assistant
  message the agent is forced to start with; it goes to the prompt side, so it has no loss).
- SFT, conversational language modelling: ``messages`` ending with the assistant turn.
- Preference (ORPO): ``prompt`` (messages), ``chosen`` / ``rejected`` (strings = continuations
  after ``prefix``, as in ``records.PreferencePair``, or one-message assistant lists), optional
  ``prefix``. A chosen/rejected text that already starts with the prefix is not prefixed twice.

Without a ``prefix`` column, a row's ``agent`` column (as ``matsql labels`` writes) names the
prefix: the agent template's, removed from the assistant text when the text starts with it.

Normalised rows are ``{"messages", "prefix", "completion" | ("chosen", "rejected"), "group"}``;
``group`` (the question id when present) keeps all rows of one question on one side of the
train/eval split.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from matsql.benchmarks.splits import split_questions
from matsql.fileio import iter_jsonl, sha256_file
from matsql.train.config import DataSpec, Source


class DataError(ValueError):
    """Unusable training data; the message names the file and row."""


@dataclass
class SplitData:
    train: list[dict[str, Any]]
    eval: list[dict[str, Any]]
    per_source: list[dict[str, Any]] = field(default_factory=list)  # counts, for run.json and --dry-run


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = [row for _, row in iter_jsonl(path, DataError)]
    return rows


def read_source(src: Source) -> list[dict[str, Any]]:
    """Raw rows of one source (a JSONL file, a folder of ``<split>.jsonl``, or a datasets folder)."""
    path = Path(src.path)
    if path.is_file():
        return _read_jsonl(path)
    if not path.is_dir():
        raise DataError(f"data source not found: {path}")
    if (path / f"{src.split}.jsonl").is_file() and not (path / "dataset_dict.json").exists():
        return _read_jsonl(path / f"{src.split}.jsonl")
    from datasets import Dataset, DatasetDict, load_from_disk

    try:
        ds = load_from_disk(str(path))
    except FileNotFoundError as e:
        raise DataError(f"{path}: neither a JSONL file nor a datasets folder ({e})") from None
    if isinstance(ds, DatasetDict):
        if src.split not in ds:
            raise DataError(f"{path}: no split {src.split!r} (has {sorted(ds)})")
        ds = ds[src.split]
    assert isinstance(ds, Dataset)
    return ds.to_list()


def _messages(value: Any, where: str) -> list[dict[str, str]]:
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if not isinstance(value, list) or not all(isinstance(m, dict) and "role" in m for m in value):
        raise DataError(f"{where}: expected a list of chat messages")
    return [{"role": str(m["role"]), "content": str(m.get("content") or "")} for m in value]


def _assistant_text(value: Any, where: str) -> str:
    if isinstance(value, str):
        return value
    msgs = _messages(value, where)
    if len(msgs) != 1 or msgs[0]["role"] != "assistant":
        raise DataError(f"{where}: expected one assistant message")
    return msgs[0]["content"]


def _strip_prefix(text: str, prefix: str) -> str:
    return text[len(prefix) :] if prefix and text.startswith(prefix) else text


def agent_prefix(agent: Any) -> str:
    """The assistant-turn prefix of a known agent ("" for unknown ones)."""
    from matsql.agents.templates import load_template

    try:
        return load_template(str(agent)).prefix if agent else ""
    except ValueError:
        return ""


def normalise_row(row: dict[str, Any], method: str, where: str) -> dict[str, Any]:
    """One raw row -> the trainer's normalised row (see module doc)."""
    # rows written by `matsql labels` carry the prefix inside the assistant message and name the agent
    prefix = str(row["prefix"]) if row.get("prefix") is not None else agent_prefix(row.get("agent"))
    group = str(row.get("question_id") or row.get("group") or where)
    if method == "orpo":
        for key in ("prompt", "chosen", "rejected"):
            if key not in row:
                raise DataError(f"{where}: preference row has no {key!r}")
        return {
            "messages": _messages(row["prompt"], where),
            "prefix": prefix,
            "chosen": _strip_prefix(_assistant_text(row["chosen"], where), prefix),
            "rejected": _strip_prefix(_assistant_text(row["rejected"], where), prefix),
            "group": group,
        }
    if "prompt" in row and "completion" in row:
        messages = _messages(row["prompt"], where)
        completion = _assistant_text(row["completion"], where)
    elif "messages" in row:
        msgs = _messages(row["messages"], where)
        if not msgs or msgs[-1]["role"] != "assistant":
            raise DataError(f"{where}: 'messages' must end with an assistant turn")
        messages, completion = msgs[:-1], msgs[-1]["content"]
    else:
        raise DataError(f"{where}: SFT row needs 'prompt' + 'completion' or 'messages'")
    return {
        "messages": messages,
        "prefix": prefix,
        "completion": _strip_prefix(completion, prefix),
        "group": group,
    }


def mix(rows: list[dict[str, Any]], weight: float, rng: random.Random) -> list[dict[str, Any]]:
    """``weight`` times the rows: whole copies for the integer part, a sample for the rest."""
    whole, frac = int(weight), weight - int(weight)
    out = [r for _ in range(whole) for r in rows]
    out += rng.sample(rows, round(frac * len(rows)))
    return out


def _hold_out(
    rows: list[dict[str, Any]], fraction: float, seed: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(train rows, eval rows): whole questions (groups) held out by the hash draw, so a question
    keeps its side when sources grow or are reordered."""
    held = set(split_questions({r["group"] for r in rows}, {"eval": fraction}, seed, "hash")["eval"])
    return [r for r in rows if r["group"] not in held], [r for r in rows if r["group"] in held]


def load_split(spec: DataSpec, method: str) -> SplitData:
    """Read, normalise, split and mix all sources (deterministic given ``spec.seed``)."""
    train: list[dict[str, Any]] = []
    evals: list[dict[str, Any]] = []
    stats = []
    for i, src in enumerate(spec.sources):
        rows = [normalise_row(r, method, f"{src.path}[{j}]") for j, r in enumerate(read_source(src))]
        # an empty source is legal (a labelling mode can yield no pair): the runner then saves the
        # starting model with status no_data instead of training
        tr, ev = (rows, []) if spec.eval_sources else _hold_out(rows, spec.eval_fraction, spec.seed)
        mixed = mix(tr, src.weight, random.Random(f"{spec.seed}:{i}"))
        train += mixed
        evals += ev
        stats.append(
            {"path": src.path, "split": src.split, "rows": len(rows), "train": len(mixed), "eval": len(ev)}
        )
    for i, src in enumerate(spec.eval_sources):
        rows = [normalise_row(r, method, f"{src.path}[{j}]") for j, r in enumerate(read_source(src))]
        mixed = mix(rows, src.weight, random.Random(f"{spec.seed}:eval:{i}"))
        evals += mixed
        stats.append(
            {"path": src.path, "split": src.split, "rows": len(rows), "train": 0, "eval": len(mixed)}
        )
    random.Random(spec.seed).shuffle(train)
    return SplitData(train, evals, stats)


def fingerprint(path: str | Path) -> dict[str, Any]:
    """sha256 of a source's files (each, and one over the sorted list) for run.json."""
    p = Path(path)
    files = [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.is_file())
    per_file = {(f.name if p.is_file() else str(f.relative_to(p))): sha256_file(f) for f in files}
    total = hashlib.sha256("".join(f"{k}:{v}\n" for k, v in per_file.items()).encode()).hexdigest()
    return {"path": str(path), "sha256": total, "files": per_file}
