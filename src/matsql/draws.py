"""Keyed random draws: a draw that depends only on a seed and the keys it names (a question id,
a prompt digest, a part name), never on what was drawn before it or on the global generator.

Two formulas exist because committed data was drawn with each; a new caller picks either, and
changing one changes every dataset and split drawn with it:

- :func:`rng_for` (``"seed|key|..."``, its 16-hex sha256 digest as the seed): pair caps and E1
  caps in ``labels``, and the question splitter's ``shuffle`` draw (``rng_for(seed, "split")``);
- :func:`sft_rng` and :func:`sft_unit` (``"seed:key:..."``): the SFT data builders of
  ``train sft-data``, and the question splitter's ``hash`` draw (``sft_unit(seed, key)``).
"""

from __future__ import annotations

import hashlib
import random

from matsql.records import digest


def rng_for(seed: int, *keys: str) -> random.Random:
    """A generator keyed on (seed, keys): a choice for one prompt does not depend on which other
    prompts or questions were processed before it."""
    return random.Random(int(digest("|".join([str(seed), *keys])), 16))


def sft_rng(seed: int, *keys: object) -> random.Random:
    """A generator keyed on (seed, keys), seeded by the string ``"seed:key:..."``."""
    return random.Random(":".join(map(str, (seed, *keys))))


def sft_unit(seed: int, *keys: object) -> float:
    """A number in [0, 1) keyed on (seed, keys): the first 48 bits of sha256 of ``"seed:key:..."``."""
    h = hashlib.sha256(":".join(map(str, (seed, *keys))).encode()).hexdigest()
    return int(h[:12], 16) / 16**12
