"""Writing labels to disk: a ``datasets`` DatasetDict (train/test split by question) that TRL
reads directly, a JSONL view a person can open, and the yield next to them.

TRL conversational formats (TRL 1.x ``dataset_formats``): preference = ``prompt`` (messages up
to the assistant turn), ``chosen`` / ``rejected`` (one assistant message each);
prompt-completion = ``prompt`` + ``completion`` (one assistant message). The assistant-turn
prefix (``SELECT.``, ``FIXED SQL:``) is part of the assistant message, as the agent generates
after it at inference. Extra columns (question_id, meta as JSON) ride along for diagnostics.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from matsql.fileio import atomic_dir, atomic_write, only_datasets_folder, write_text_atomic
from matsql.labels.common import SFTExample
from matsql.records import PreferencePair

_INFO_COLUMNS = ("question_id", "db_id", "agent", "mode", "meta")


def _assistant(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


def _info(r: PreferencePair | SFTExample) -> dict[str, Any]:
    """The ``_INFO_COLUMNS`` of a row (meta as JSON: one column type for every row)."""
    return {
        "question_id": r.question_id,
        "db_id": r.db_id,
        "agent": r.agent,
        "mode": r.mode,
        "meta": json.dumps(r.meta, sort_keys=True),
    }


def pair_row(p: PreferencePair) -> dict[str, Any]:
    return {
        "prompt": p.prompt,
        "chosen": _assistant(p.prefix + p.chosen),
        "rejected": _assistant(p.prefix + p.rejected),
        **_info(p),
    }


def sft_row(e: SFTExample) -> dict[str, Any]:
    return {"prompt": e.prompt, "completion": _assistant(e.prefix + e.completion), **_info(e)}


def _features(kind: str):
    from datasets import Features, Value

    msgs = [{"role": Value("string"), "content": Value("string")}]
    cols = {"prompt": msgs}
    if kind == "preference":
        cols |= {"chosen": msgs, "rejected": msgs}
    else:
        cols |= {"completion": msgs}
    cols |= {c: Value("string") for c in _INFO_COLUMNS}
    return Features(cols)


def _dataset(rows: Sequence[dict[str, Any]], kind: str):
    from datasets import Dataset

    features = _features(kind)
    return Dataset.from_dict({c: [r[c] for r in rows] for c in features}, features=features)


def _write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    with atomic_write(path) as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def write_split(
    out_dir: Path,
    name: str,
    items: Sequence[PreferencePair] | Sequence[SFTExample],
    test_ids: set[str],
) -> dict[str, int]:
    """``out_dir/<name>/`` (DatasetDict train/test) and ``out_dir/<name>.jsonl`` (all items,
    with their split). Returns the row count of each split."""
    from datasets import DatasetDict

    out_dir.mkdir(parents=True, exist_ok=True)
    kind = "preference" if name == "pairs" else "sft"
    to_row = pair_row if kind == "preference" else sft_row
    rows = {"train": [], "test": []}
    for it in items:
        rows["test" if it.question_id in test_ids else "train"].append(to_row(it))  # type: ignore[arg-type]
    dd = DatasetDict({s: _dataset(r, kind) for s, r in rows.items()})
    with atomic_dir(out_dir / name, keep_existing=only_datasets_folder) as tmp:
        dd.save_to_disk(str(tmp), num_shards={s: 1 for s in dd})  # an empty split needs one shard to reload
    _write_jsonl(
        out_dir / f"{name}.jsonl",
        (
            {"split": "test" if it.question_id in test_ids else "train", **it.model_dump(mode="json")}
            for it in items
        ),
    )
    return {s: len(r) for s, r in rows.items()}


def write_json(path: Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")
