"""Selector best-of-N over a rollout record's options: MATS knockout, picks.

The options (final candidates whose SQL executed, deduplicated by execution result, in a seeded
order) are built by :func:`matsql.agents.selector.build_options`, the one builder that labels
and SFT data use too.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from matsql.agents.selector import Option
from matsql.records import RolloutRecord


@dataclass
class Pick:
    question_id: str
    db_id: str
    difficulty: str
    n_candidates: int
    n_options: int
    option_index: int | None
    candidate_index: int | None
    sql: str | None
    correct: bool
    pass_at_k: bool
    rounds: int = 0
    parse_failures: int = 0
    trace: list[list[int]] = field(default_factory=list)


ChooseFn = Callable[[list[tuple[RolloutRecord, list[Option]]]], list[int | None]]
"""Given (record, options) groups, return the chosen position in each group (None = parse failure)."""


def knockout(
    records: list[RolloutRecord], options: list[list[Option]], choose: ChooseFn, chunk: int = 3
) -> list[tuple[int | None, int, int, list[list[int]]]]:
    """MATS knockout: split the remaining options in chunks of ``chunk``, the selector picks one
    per chunk, winners advance until one is left. A chunk whose answer does not parse advances
    its first option (counted). Batched across questions: one selector call per round.

    Returns, per question, (winning option position, rounds, parse failures, trace).
    """
    alive = [list(range(len(o))) for o in options]
    rounds = [0] * len(records)
    failures = [0] * len(records)
    traces: list[list[list[int]]] = [[] for _ in records]
    while True:
        jobs: list[tuple[int, list[int]]] = []
        for qi, pos in enumerate(alive):
            if len(pos) > 1:
                jobs.extend((qi, pos[i : i + chunk]) for i in range(0, len(pos), chunk))
        if not jobs:
            break
        asks = [(qi, grp) for qi, grp in jobs if len(grp) > 1]
        answers = choose([(records[qi], [options[qi][p] for p in grp]) for qi, grp in asks]) if asks else []
        ans_iter = iter(answers)
        nxt: dict[int, list[int]] = {}
        for qi, grp in jobs:
            if len(grp) == 1:
                win = grp[0]
            else:
                a = next(ans_iter)
                if a is None or not 0 <= a < len(grp):
                    failures[qi] += 1
                    a = 0
                win = grp[a]
            nxt.setdefault(qi, []).append(win)
        for qi, winners in nxt.items():
            traces[qi].append(winners)
            alive[qi] = winners
            rounds[qi] += 1
    return [
        (pos[0] if pos else None, r, f, t)
        for pos, r, f, t in zip(alive, rounds, failures, traces, strict=True)
    ]


def make_picks(
    records: list[RolloutRecord],
    options: list[list[Option]],
    winners: list[int | None],
    rounds=None,
    failures=None,
    traces=None,
) -> list[Pick]:
    picks = []
    for i, (rec, opts, w) in enumerate(zip(records, options, winners, strict=True)):
        opt = opts[w] if w is not None else None
        q = rec.question
        picks.append(
            Pick(
                question_id=q.question_id,
                db_id=q.db_id,
                difficulty=q.difficulty,
                n_candidates=len(rec.candidates),
                n_options=len(opts),
                option_index=w,
                candidate_index=opt.candidate_index if opt else None,
                sql=opt.sql if opt else None,
                correct=bool(opt and opt.correct),
                pass_at_k=any(c.final_correct for c in rec.candidates),
                rounds=rounds[i] if rounds else 0,
                parse_failures=failures[i] if failures else 0,
                trace=traces[i] if traces else [],
            )
        )
    return picks


def backend_chooser(backend, spec, schema_of: Callable[[str], str], seed: int = 0) -> ChooseFn:
    """A :data:`ChooseFn` that asks a selector model (greedy by default)."""
    from matsql.agents import selector

    def choose(groups):
        prompts = [selector.build(rec.question, schema_of(rec.question.db_id), opts) for rec, opts in groups]
        outs = backend.generate(
            prompts,
            n=1,
            temperature=spec.temperature,
            max_tokens=spec.max_tokens,
            stop=spec.stop or None,
            seed=seed,
        )
        return [selector.parse(texts[0], len(opts)) for texts, (_, opts) in zip(outs, groups, strict=True)]

    return choose


def majority_chooser(groups):
    """Baseline chooser: the option most candidates agree on (ties: first)."""
    return [max(range(len(opts)), key=lambda i: (opts[i].votes, -i)) for _, opts in groups]
