"""The one question splitter: disjoint, seeded parts of a set of questions.

Every split of questions goes through :func:`split_questions`: the label test split
(``labels build --test-frac``), the SFT data test split and a recipe's ``eval_fraction``
(``train sft-data``, ``train``), and a rollout's ``--parts``. A split depends only on the
distinct keys, the parts and the seed (never on input order, duplicates or the global random
state), so every stage that names the same split sees the same questions.

Three draws exist because committed results and config hashes depend on each; a new caller
picks the one whose property it needs:

- ``permutation`` (rollout ``--parts``): one seeded permutation of the sorted keys cut into
  consecutive slices of exact sizes; a part depends only on the sizes of the parts before it
  and its own, so adding a later part leaves earlier ones unchanged.
- ``shuffle`` (label test split): a seeded shuffle of the sorted keys cut the same way
  (``matsql.draws.rng_for(seed, "split")``).
- ``hash`` (SFT / training eval split): each key falls in a part by a seeded hash of the key
  alone (``matsql.draws.sft_unit(seed, key)``), so a key keeps its part when other keys are
  added or removed; part sizes are only approximately the shares.

Part sizes: an ``int`` is a count; a ``float`` is a share of the keys, for the cut draws
``round(share * n)`` with at least one key when the share is positive and there are two or more
keys, and never all of them; for ``hash`` the probability of falling in the part.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping
from typing import Literal, TypeVar

from matsql.draws import rng_for, sft_unit

Draw = Literal["permutation", "shuffle", "hash"]
DRAWS: tuple[Draw, ...] = ("permutation", "shuffle", "hash")
K = TypeVar("K", str, int)


def _count(size: int | float, n: int) -> int:
    if isinstance(size, float):
        if not 0.0 <= size < 1.0:
            raise ValueError(f"a share of the questions must be in [0, 1), got {size}")
        count = round(size * n)
        return min(max(count, 1), n - 1) if size > 0 and n >= 2 else count
    if size < 0:
        raise ValueError(f"a part size must not be negative, got {size}")
    return size


def split_questions(
    keys: Iterable[K], parts: Mapping[str, int | float], seed: int, draw: Draw = "permutation"
) -> dict[str, list[K]]:
    """``{part name: its keys, sorted}`` for disjoint parts of the distinct ``keys`` (question
    ids, or positions in a benchmark's question list); keys in no part are the rest. See the
    module docstring for the draws and sizes."""
    ordered = sorted(set(keys))
    n = len(ordered)
    if draw == "hash":
        out: dict[str, list[K]] = {}
        low = 0.0
        for name, share in parts.items():
            if not 0.0 <= share <= 1.0:
                raise ValueError(f"the hash draw takes shares in [0, 1], got {name}={share!r}")
            out[name] = [k for k in ordered if low <= sft_unit(seed, k) < low + share]
            low += share
        return out
    if draw == "permutation":
        ordered = random.Random(f"parts:{seed}").sample(ordered, n)
    elif draw == "shuffle":
        rng_for(seed, "split").shuffle(ordered)
    else:
        raise ValueError(f"draw must be one of {', '.join(DRAWS)}, got {draw!r}")
    sizes = {name: _count(size, n) for name, size in parts.items()}
    if sum(sizes.values()) > n:
        raise ValueError(f"the parts ask for {sum(sizes.values())} questions; there are {n}")
    out, start = {}, 0
    for name, size in sizes.items():
        out[name] = sorted(ordered[start : start + size])
        start += size
    return out
