"""Writing labels to disk: a ``datasets`` DatasetDict (train/test split by question) that TRL
reads directly, a JSONL view a person can open, and the yield next to them. Every training-data
folder (pairs and E1 here, ``train sft-data`` in ``sft_data.py``) is written by
:func:`write_datasets`.

TRL conversational formats (TRL 1.x ``dataset_formats``): preference = ``prompt`` (messages up
to the assistant turn), ``chosen`` / ``rejected`` (one assistant message each);
prompt-completion = ``prompt`` + ``completion`` (one assistant message). The assistant-turn
prefix (``SELECT.``, ``FIXED SQL:``) is part of the assistant message, as the agent generates
after it at inference. Extra columns (question_id, meta as JSON) ride along for diagnostics.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
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


def write_datasets(
    out_dir: Path,
    name: str,
    splits: Mapping[str, Sequence[dict[str, Any]]],
    features: Any,
    jsonl_rows: Iterable[dict[str, Any]],
) -> dict[str, int]:
    """The one writer of a training-data folder (preference pairs, E1 and SFT data):
    ``out_dir/<name>/``, a DatasetDict of ``splits`` with ``features`` (an empty split keeps one
    shard so that it reloads), swapped in whole (:func:`matsql.fileio.atomic_dir`; only a
    datasets folder is replaced), and ``out_dir/<name>.jsonl``, one JSON line per row of
    ``jsonl_rows`` for a person to read. Returns the row count of each split."""
    from datasets import Dataset, DatasetDict

    out_dir.mkdir(parents=True, exist_ok=True)
    dd = DatasetDict(
        {
            s: Dataset.from_dict({c: [r[c] for r in rs] for c in features}, features=features)
            for s, rs in splits.items()
        }
    )
    with atomic_dir(out_dir / name, keep_existing=only_datasets_folder) as tmp:
        dd.save_to_disk(str(tmp), num_shards={s: 1 for s in dd})
    with atomic_write(out_dir / f"{name}.jsonl") as f:
        for r in jsonl_rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    return {s: len(rs) for s, rs in splits.items()}


def write_split(
    out_dir: Path,
    name: str,
    items: Sequence[PreferencePair] | Sequence[SFTExample],
    test_ids: set[str],
) -> dict[str, int]:
    """``out_dir/<name>/`` (DatasetDict train/test) and ``out_dir/<name>.jsonl`` (all items,
    in their order, with their split). Returns the row count of each split."""
    kind = "preference" if name == "pairs" else "sft"
    to_row = pair_row if kind == "preference" else sft_row
    rows: dict[str, list[dict[str, Any]]] = {"train": [], "test": []}
    for it in items:
        rows["test" if it.question_id in test_ids else "train"].append(to_row(it))  # type: ignore[arg-type]
    return write_datasets(
        out_dir,
        name,
        rows,
        _features(kind),
        (
            {"split": "test" if it.question_id in test_ids else "train", **it.model_dump(mode="json")}
            for it in items
        ),
    )


def write_json(path: Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")
