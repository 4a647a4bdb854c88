"""Selector best-of-N over a rollout record's options: MATS knockout, model-free pick rules, picks.

The options (final candidates whose SQL executed, deduplicated by execution result, in a seeded
order; with ``union=True`` the planner SQL the fixer replaced too) are built by
:func:`matsql.agents.selector.build_options`, the one builder that labels and SFT data use too.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from matsql.agents.selector import Option, build_options, executed_digest, fixer_changed
from matsql.records import Candidate, RolloutRecord


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


# --- Pick rules: which option to keep, from the record alone (no model, no gold) -------------
#
# Why: the trained selector of results/study-spider picked 2.3-3.3 pp below a plain vote by
# execution result in every team, and the verdicts it could have used were miscalibrated. These
# rules are pure functions of a record's options, so they are measured offline on committed
# rollouts (scripts/selection_offline.py) before a study spends GPU time on them, and the plan
# can choose one with ``matsql select --method NAME``. None of them reads ``Option.correct`` or
# any other gold-derived field: ``correct`` only scores the pick afterwards.

RuleFn = Callable[[RolloutRecord, Sequence[Option]], int | None]
"""Given one record and its options, the chosen option's position (None when there are none)."""


def approvals(c: Candidate) -> int:
    """'correct' verdicts that apply to the candidate's final SQL. The inference branch's
    critiques judge the planner SQL, so a candidate the fixer changed has none."""
    b = c.main
    if b is None or fixer_changed(c):
        return 0
    return sum(x.verdict == "correct" for x in b.critiques.values())


def producers(record: RolloutRecord, option: Option) -> list[tuple[int, Candidate]]:
    """(rank, candidate) for each candidate the option counts (``option.candidates``): one that
    gave the result with its final SQL ranks by its index, one that gave it with a planner SQL
    the fixer replaced (union options) ranks after every final one (K + index). Sorted by rank:
    the first is the option's representative."""
    digest = option.exec.rows_digest
    k = len(record.candidates)
    by_index = {c.index: c for c in record.candidates}
    out = []
    for i in option.candidates:
        c = by_index[i]
        out.append((i if executed_digest(c.final_exec) == digest else k + i, c))
    return sorted(out, key=lambda rc: rc[0])


def _argmax(record: RolloutRecord, options: Sequence[Option], score: Callable[[Option], tuple]) -> int | None:
    """The option with the highest score; ties go to the option whose first producer ranks first
    (the lowest candidate index, as :func:`matsql.evaluate.metrics.majority_pick` breaks them)."""
    if not options:
        return None
    first = [producers(record, o)[0][0] for o in options]
    return max(range(len(options)), key=lambda i: (*score(options[i]), -first[i]))


def majority_rule(record: RolloutRecord, options: Sequence[Option]) -> int | None:
    """The result most candidates share (on :func:`build_options` options this is the report's
    majority column, question for question)."""
    return _argmax(record, options, lambda o: (o.votes,))


def verdict_vote_rule(record: RolloutRecord, options: Sequence[Option]) -> int | None:
    """A vote in which each candidate counts 1 plus its 'correct' verdicts (0-2 with two
    validators) that apply to its final SQL: the validators as voters."""
    return _argmax(record, options, lambda o: (sum(1 + approvals(c) for _, c in producers(record, o)),))


def approved_first_rule(record: RolloutRecord, options: Sequence[Option]) -> int | None:
    """The result with the most candidates that every validator approved (and the fixer kept),
    then the most votes: a filter before the vote."""

    def score(o: Option) -> tuple[int, int]:
        ps = producers(record, o)
        full = sum(1 for _, c in ps if c.main and c.main.critiques and approvals(c) == len(c.main.critiques))
        return (full, o.votes)

    return _argmax(record, options, score)


def majority_verdict_tiebreak_rule(record: RolloutRecord, options: Sequence[Option]) -> int | None:
    """The majority; a tie goes to the result with more applicable 'correct' verdicts."""
    return _argmax(record, options, lambda o: (o.votes, sum(approvals(c) for _, c in producers(record, o))))


def selector_near_top(
    record: RolloutRecord, options: Sequence[Option], selected: int | None, slack: int = 0
) -> int | None:
    """The selector's pick when its result has at least the top vote count minus ``slack``
    (``slack=0``: the selector only breaks ties of the majority), else the majority."""
    maj = majority_rule(record, options)
    if selected is None or maj is None:
        return maj
    return selected if options[selected].votes >= options[maj].votes - slack else maj


def selector_unless_majority(
    record: RolloutRecord, options: Sequence[Option], selected: int | None
) -> int | None:
    """The majority when more than half of the K candidates agree, else the selector's pick."""
    maj = majority_rule(record, options)
    if maj is None or selected is None or 2 * options[maj].votes > len(record.candidates):
        return maj
    return selected


@dataclass(frozen=True)
class PickRule:
    """A model-free way to pick, with the options it picks among."""

    name: str
    choose: RuleFn
    union: bool  # options over the planner and the final SQL (build_options(union=True))
    help: str

    def options(self, record: RolloutRecord, seed: int = 0, with_verdicts: bool = False) -> list[Option]:
        return build_options(record, seed=seed, with_verdicts=with_verdicts, union=self.union)


PICK_RULES: dict[str, PickRule] = {
    r.name: r
    for r in (
        PickRule("majority", majority_rule, False, "vote by the final candidates' execution results"),
        PickRule(
            "union-vote",
            majority_rule,
            True,
            "vote by execution result over every SQL the pipeline ran: the final candidates and the "
            "planner SQL the fixer replaced",
        ),
        PickRule("verdict-vote", verdict_vote_rule, False, "each candidate votes 1 + its 'correct' verdicts"),
        PickRule(
            "approved-first",
            approved_first_rule,
            False,
            "most candidates that every validator approved, then most votes",
        ),
        PickRule(
            "majority-verdict-tiebreak",
            majority_verdict_tiebreak_rule,
            False,
            "majority; ties to the result with more 'correct' verdicts",
        ),
    )
}


def rule_picks(records: Sequence[RolloutRecord], rule: PickRule, seed: int = 0) -> list[Pick]:
    """Apply a rule to every record. A union rule's ``pass_at_k`` is its own oracle: any of its
    options right (a replaced planner SQL can be right when every final one is wrong)."""
    options = [rule.options(r, seed=seed) for r in records]
    picks = make_picks(
        list(records), options, [rule.choose(r, o) for r, o in zip(records, options, strict=True)]
    )
    if rule.union:
        for p, opts in zip(picks, options, strict=True):
            p.pass_at_k = any(o.correct for o in opts)
    return picks
