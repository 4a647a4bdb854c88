"""Pick rules measured offline on committed evaluation rollouts: EX of each rule per team, and its
paired difference from plain majority vote (bootstrap 95% CI over questions, exact McNemar).

No model runs. The rules are the pure functions of ``matsql.evaluate.selection``; the trained
selector's row and the rules that lean on it read its committed picks (``picks.jsonl[.gz]`` in
each run folder, built with ``matsql select`` at seed 0). No rule reads gold: correctness only
scores a pick, under the rollouts' own EX rule (``--ex run``) or re-judged under Spider's
official rule by executing each picked SQL against the benchmark (``--ex spider``; MATSQL_DATA).

    python scripts/selection_offline.py                               # results/study-spider, 7 teams
    python scripts/selection_offline.py --ex spider --md results/study-spider-v2/selection-offline.tables.md
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from pathlib import Path

from matsql.agents.selector import Option, build_options
from matsql.evaluate.outcomes import read_outcome_rows
from matsql.evaluate.report import locate_run
from matsql.evaluate.selection import (
    PICK_RULES,
    majority_rule,
    selector_near_top,
    selector_unless_majority,
)
from matsql.evaluate.statistics import compare_arms
from matsql.records import RolloutRecord
from matsql.rollout.io import read_header, read_records

STUDY = Path(__file__).resolve().parents[1] / "results" / "study-spider"
TEAMS = ("sft", "iter1-collab", "iter1-indep", "iter1-joint", "collab", "indep", "joint")

Choice = tuple[list[Option], int | None]  # one question's options and the chosen position


def _selected(record: RolloutRecord, options: list[Option], pick: dict | None) -> int | None:
    """The committed selector pick as a position among ``options`` (found by its candidate)."""
    if pick is None or pick.get("candidate_index") is None:
        return None
    pos = [i for i, o in enumerate(options) if o.candidate_index == pick["candidate_index"]]
    if len(pos) != 1:
        raise ValueError(f"{record.question_id}: the committed pick's candidate is in {len(pos)} options")
    return pos[0]


def team_choices(records: Sequence[RolloutRecord], picks: dict[str, dict] | None) -> dict[str, list[Choice]]:
    """Rule name -> per-question (options, chosen position). Selector rows only with picks."""
    final = [build_options(r, seed=0) for r in records]
    out: dict[str, list[Choice]] = {}
    for name, rule in PICK_RULES.items():
        opts = final if not rule.union else [rule.options(r, seed=0) for r in records]
        out[name] = [(o, rule.choose(r, o)) for r, o in zip(records, opts, strict=True)]
    if picks is not None:
        sel = [_selected(r, o, picks.get(r.question_id)) for r, o in zip(records, final, strict=True)]
        hybrids: dict[str, Callable[[RolloutRecord, list[Option], int | None], int | None]] = {
            "selector": lambda r, o, s: s,
            "selector-tiebreak": lambda r, o, s: selector_near_top(r, o, s, slack=0),
            "selector-near-top": lambda r, o, s: selector_near_top(r, o, s, slack=1),
            "selector-unless-majority": selector_unless_majority,
        }
        for name, fn in hybrids.items():
            out[name] = [(o, fn(r, o, s)) for r, o, s in zip(records, final, sel, strict=True)]
    # the majority rule must be the report's majority column, question for question
    assert all(w == majority_rule(r, o) for r, (o, w) in zip(records, out["majority"], strict=True))
    return out


class Judge:
    """Correctness of a picked SQL under Spider's official rule (executed once per SQL)."""

    def __init__(self, benchmark: str, data: Path | None):
        from matsql.benchmarks import load_benchmark

        self.bench = load_benchmark(benchmark, root=data)
        self.gold = {q.question_id: q for q in self.bench.questions}
        self.cache: dict[tuple[str, str], bool] = {}

    def prepare(self, items: set[tuple[str, str]]) -> None:
        from matsql.sql.executor import Executor

        todo = sorted(i for i in items if i not in self.cache)
        triples = []
        for qid, sql in todo:
            q = self.gold[qid]
            triples.append((self.bench.db_path(q.db_id), sql, q.gold_sql))
        with Executor(keep_rows=False) as ex:
            for item, j in zip(todo, ex.judge_many(triples, "spider"), strict=True):
                self.cache[item] = bool(j.correct)

    def __call__(self, qid: str, option: Option) -> bool:
        return self.cache[(qid, option.sql)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="*", type=Path, help="run folders (rollout.jsonl[.gz] + picks.jsonl[.gz])")
    ap.add_argument("--names", default=None, help="comma-separated team names (default: folder names)")
    ap.add_argument("--ex", choices=("run", "spider"), default="run", help="EX rule that scores the picks")
    ap.add_argument("--data", type=Path, default=None, help="benchmark root for --ex spider")
    ap.add_argument("--n-resamples", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    ap.add_argument("--pair", default="collab,indep", help="A,B: also A - B under every rule ('' for none)")
    ap.add_argument("--md", type=Path, default=None, help="also write the tables (markdown) here")
    ap.add_argument("--json", type=Path, default=None, help="also write every number (JSON) here")
    args = ap.parse_args()
    runs = args.runs or [STUDY / f"eval-{t}" for t in TEAMS]
    names = args.names.split(",") if args.names else [p.name.removeprefix("eval-") for p in runs]
    teams: dict[str, tuple[list[RolloutRecord], dict[str, list[Choice]]]] = {}
    for name, run in zip(names, runs, strict=True):
        rollout, picks_path = locate_run(run)
        records = read_records(rollout)
        picks = None
        if picks_path is not None:
            picks = {
                r.question_id: {"candidate_index": r.extra.get("candidate_index")}
                for r in read_outcome_rows(picks_path)
            }
        teams[name] = (records, team_choices(records, picks))
    judge: Judge | None = None
    if args.ex == "spider":  # every option's SQL: picks and the pass@K ceilings
        header = read_header(locate_run(runs[0])[0])
        judge = Judge(str(header.config["benchmark"]) if header else "spider-dev", args.data)
        judge.prepare(
            {
                (r.question_id, o.sql)
                for records, choices in teams.values()
                for rows in choices.values()
                for r, (opts, _) in zip(records, rows, strict=True)
                for o in opts
            }
        )

    def right(r: RolloutRecord, o: Option) -> bool:
        return judge(r.question_id, o) if judge else o.correct

    def correct(records: list[RolloutRecord], rows: list[Choice]) -> dict[str, float]:
        return {
            r.question_id: float(w is not None and right(r, o[w]))
            for r, (o, w) in zip(records, rows, strict=True)
        }

    rules = list(dict.fromkeys(n for _, ch in teams.values() for n in ch))
    table: dict[str, dict[str, dict]] = {}
    for rule in rules:
        for team, (records, choices) in teams.items():
            if rule not in choices:
                continue
            db_of = {r.question_id: r.question.db_id for r in records}
            res = compare_arms(
                correct(records, choices[rule]),
                correct(records, choices["majority"]),
                db_of,
                n_resamples=args.n_resamples,
                seed=args.seed,
            )
            table.setdefault(rule, {})[team] = {
                "ex": 100 * res.ex_a,
                "diff": 100 * res.diff,
                "ci": [100 * res.ci_low, 100 * res.ci_high],
                "mcnemar": [res.mcnemar_b, res.mcnemar_c, res.mcnemar_p],
                "n": res.n,
            }
    ceilings = {"pass@K (final candidates)": "majority", "pass@K (union options)": "union-vote"}
    for label, name in ceilings.items():  # for reference only: they read gold
        for team, (records, choices) in teams.items():
            hits = [
                any(right(r, o) for o in opts) for r, (opts, _) in zip(records, choices[name], strict=True)
            ]
            table.setdefault(label, {})[team] = {"ex": 100 * sum(hits) / len(hits)}

    rule_text = "the rollouts' own EX rule" if judge is None else "Spider's official EX rule (re-judged)"
    n = next(iter(table["majority"].values()))["n"]
    head = ["| rule | " + " | ".join(teams) + " |", "|---|" + "---|" * len(teams)]
    lines = [f"EX (%) per team under {rule_text}; {n} questions", "", *head]
    for rule in [*rules, *ceilings]:
        cells = [f"{table[rule][t]['ex']:.2f}" if t in table[rule] else "-" for t in teams]
        lines.append(f"| {rule} | " + " | ".join(cells) + " |")
    lines += ["", "Difference from majority (pp), paired bootstrap 95% CI, McNemar b / c", "", *head]
    for rule in rules[1:]:
        cells = []
        for t in teams:
            v = table[rule].get(t)
            cells.append(
                "-"
                if v is None
                else f"{v['diff']:+.2f} [{v['ci'][0]:+.2f}, {v['ci'][1]:+.2f}] {v['mcnemar'][0]}/{v['mcnemar'][1]}"
            )
        lines.append(f"| {rule} | " + " | ".join(cells) + " |")
    pair = [t for t in args.pair.split(",") if t]
    if len(pair) == 2 and all(t in teams for t in pair):
        a, b = pair
        lines += ["", f"{a} - {b} (pp) under each rule, paired bootstrap 95% CI, McNemar b / c, p", ""]
        lines += ["| rule | difference | 95% CI | McNemar |", "|---|---|---|---|"]
        db_of = {r.question_id: r.question.db_id for r in teams[a][0]}
        for rule in rules:
            if rule not in teams[a][1] or rule not in teams[b][1]:
                continue
            ca, cb = correct(teams[a][0], teams[a][1][rule]), correct(teams[b][0], teams[b][1][rule])
            res = compare_arms(ca, cb, db_of, n_resamples=args.n_resamples, seed=args.seed)
            lines.append(
                f"| {rule} | {100 * res.diff:+.2f} | [{100 * res.ci_low:+.2f}, {100 * res.ci_high:+.2f}] "
                f"| {res.mcnemar_b} / {res.mcnemar_c}, p = {res.mcnemar_p:.2f} |"
            )
            table[rule][f"{a} - {b}"] = {"diff": 100 * res.diff, "ci": [100 * res.ci_low, 100 * res.ci_high]}
    text = "\n".join(lines)
    print(text)
    if args.md:
        args.md.parent.mkdir(parents=True, exist_ok=True)
        args.md.write_text(text + "\n", encoding="utf-8")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        body = {
            "ex_rule": args.ex,
            "teams": names,
            "n_resamples": args.n_resamples,
            "seed": args.seed,
            "rules": table,
        }
        args.json.write_text(json.dumps(body, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
