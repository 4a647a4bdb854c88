"""The results table of DESIGN.md "Study protocol", one row per configuration.

| config | planner@1 | pipeline@1 | pass@8 | majority | selector EX | pick rate |

A run is a folder holding ``rollout.jsonl`` and optionally ``picks.jsonl`` (the trained
selector's picks: question_id, correct, ...), either of them gzipped as committed results are,
or a rollout file on its own. Selector EX and pick rate are "-" without picks. Numbers are
percentages over every scored question; missing-database questions are counted in a note under
the table.

The pick rate is selector EX over the oracle of what the selector picked among: the picks file's
``pass_at_k`` (``matsql select`` writes it), which is pass@K over the final candidates for the LM
selector and majority, and the union oracle for a rule that picks from the union (``union-vote``:
the final candidates and the planner SQL the fixer replaced, which can be right when every final
candidate is wrong). So it never passes 100%; the note under the table names that oracle where it
differs from pass@K. Picks without ``pass_at_k`` divide by pass@K.

``write_report`` writes the table as Markdown, CSV and LaTeX (tables are never pictures), the
numbers with 95% bootstrap intervals over questions as JSON, and a figure of selector EX, majority
and pass@K per team with those intervals (PNG, PDF, SVG; one paper column wide). Paths in the
outputs are portable (:mod:`matsql.evaluate.portable`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from matsql.evaluate.metrics import MetricSummary, MissingPolicy, QuestionOutcome, summarize, summarize_by
from matsql.evaluate.outcomes import OutcomeError, OutcomeRow, read_outcome_rows, score_rollout
from matsql.evaluate.plots import Estimate, teams_figure
from matsql.evaluate.portable import portable_path
from matsql.evaluate.statistics import ComparisonResult, paired_bootstrap, percentile_ci, show_ids

ROLLOUT_NAME = "rollout.jsonl"
PICKS_NAME = "picks.jsonl"


@dataclass(frozen=True)
class RunRow:
    """Everything one table row shows, plus what the notes under the table need."""

    name: str
    rollout: Path
    picks: Path | None
    summary: MetricSummary
    by_difficulty: dict[str, MetricSummary]
    selector_ex: float | None
    pick_rate: float | None  # selector EX / pick_oracle
    selector_by_difficulty: dict[str, float | None]
    pick_oracle: float | None = None  # share of questions where an option it picked among was right
    pick_rate_by_difficulty: dict[str, float | None] = field(default_factory=dict)
    per_question: dict[str, tuple[float, ...]] = field(default_factory=dict)  # metric -> values


def locate_run(path: Path) -> tuple[Path, Path | None]:
    """(rollout file, picks file or None) of a run folder, or of a rollout file given directly."""
    path = Path(path)
    if path.is_dir():
        rollout = _first_file(path, ROLLOUT_NAME)
        if rollout is None:
            raise OutcomeError(f"{path}: run folder without {ROLLOUT_NAME} (or {ROLLOUT_NAME}.gz)")
        return rollout, _first_file(path, PICKS_NAME)
    if path.is_file():
        return path, None
    raise OutcomeError(f"{path}: no such run folder or rollout file")


def _first_file(folder: Path, name: str) -> Path | None:
    """``folder/name``, else ``folder/name.gz``, else None."""
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def selector_hits(
    outcomes: Sequence[QuestionOutcome],
    picks: Sequence[OutcomeRow],
    *,
    missing: MissingPolicy = "wrong",
    source: str = "",
) -> dict[str, float]:
    """Selector correctness per scored question of the rollout.

    A pick for a question the rollout lacks is an error, and so is a runnable question without a
    pick (the selector must write a line, correct=false, even when it abstains). Missing-database
    questions follow ``missing`` like every other metric (wrong: 0, skip: left out).
    """
    by_id = {p.question_id: p for p in picks}
    stray = sorted(set(by_id) - {o.question_id for o in outcomes})
    if stray:
        raise OutcomeError(f"{source}: picks for questions not in the rollout: {show_ids(stray)}")
    scored = [o for o in outcomes if not (missing == "skip" and o.missing_db)]
    unpicked = sorted(o.question_id for o in scored if not o.missing_db and o.question_id not in by_id)
    if unpicked:
        raise OutcomeError(f"{source}: no pick for runnable questions: {show_ids(unpicked)}")
    return {o.question_id: 0.0 if o.missing_db else by_id[o.question_id].correct for o in scored}


def picker_oracle(
    outcomes: Sequence[QuestionOutcome], picks: Sequence[OutcomeRow], *, missing: MissingPolicy = "wrong"
) -> dict[str, float] | None:
    """Per scored question, whether any option the selector picked among was right: the picks'
    ``pass_at_k`` (for a union rule, the union oracle), missing-database questions 0 or left out
    as in :func:`selector_hits`; None when a pick does not record it."""
    if not picks or any("pass_at_k" not in p.extra for p in picks):
        return None
    by_id = {p.question_id: bool(p.extra["pass_at_k"]) for p in picks}
    return {
        o.question_id: 0.0 if o.missing_db else float(by_id.get(o.question_id, False))
        for o in outcomes
        if not (missing == "skip" and o.missing_db)
    }


def _ratio(num: float | None, den: float | None) -> float | None:
    return num / den if (num is not None and den) else None


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def build_rows(
    paths: Sequence[Path], *, missing: MissingPolicy = "wrong", common: bool = False
) -> list[RunRow]:
    """Score run folders or rollout files (``common``: only the questions every one holds,
    e.g. a finished run beside an unfinished one); each file is read and scored once."""
    located = [locate_run(p) for p in paths]
    scored = [score_rollout(rollout) for rollout, _ in located]
    only = set.intersection(*({o.question_id for o in s} for s in scored)) if common and scored else None
    return [
        _row(path, None, rollout, picks, outcomes, missing, only)
        for path, (rollout, picks), outcomes in zip(paths, located, scored, strict=True)
    ]


def build_row(path: Path, name: str | None = None, *, missing: MissingPolicy = "wrong") -> RunRow:
    """Score one run folder or rollout file."""
    rollout, picks_path = locate_run(path)
    return _row(path, name, rollout, picks_path, score_rollout(rollout), missing, None)


def _row(
    path: Path,
    name: str | None,
    rollout: Path,
    picks_path: Path | None,
    scored: Sequence[QuestionOutcome],
    missing: MissingPolicy,
    only: set[str] | None,
) -> RunRow:
    outcomes = scored if only is None else [o for o in scored if o.question_id in only]
    summary = summarize(outcomes, missing=missing)
    sel = pick = oracle = None
    sel_by: dict[str, float | None] = {}
    pick_by: dict[str, float | None] = {}
    if picks_path is not None:
        rows = read_outcome_rows(picks_path)
        hits = selector_hits(scored, rows, missing=missing, source=str(picks_path))
        if only is not None:
            hits = {q: h for q, h in hits.items() if q in only}
        sel = _mean(list(hits.values()))
        picked_among = picker_oracle(scored, rows, missing=missing)
        if picked_among is None:  # picks that do not say: the final candidates' oracle
            picked_among = {o.question_id: v for o in outcomes if (v := o.value("pass@K")) is not None}
        oracle = _mean([picked_among.get(q, 0.0) for q in hits])
        pick = _ratio(sel, oracle)
        groups: dict[str, list[float]] = {}
        oracle_groups: dict[str, list[float]] = {}
        for o in outcomes:
            if o.question_id in hits:
                groups.setdefault(o.difficulty, []).append(hits[o.question_id])
                oracle_groups.setdefault(o.difficulty, []).append(picked_among.get(o.question_id, 0.0))
        sel_by = {d: _mean(v) for d, v in groups.items()}
        pick_by = {d: _ratio(sel_by[d], _mean(oracle_groups[d])) for d in groups}
    default_name = Path(path).name if Path(path).is_dir() else rollout.stem
    kept = [o for o in outcomes if not (missing == "skip" and o.missing_db)]
    per_question = {  # the values summarize() averages, one per scored question
        m: tuple(v for o in kept if (v := o.value(m)) is not None) for m in ("pass@K", "majority")
    }
    if picks_path is not None:
        per_question["selector EX"] = tuple(hits[o.question_id] for o in kept if o.question_id in hits)
    return RunRow(
        name=name or default_name,
        rollout=rollout,
        picks=picks_path,
        summary=summary,
        by_difficulty=summarize_by(outcomes, missing=missing),
        selector_ex=sel,
        pick_rate=pick,
        selector_by_difficulty=sel_by,
        per_question=per_question,
        pick_oracle=oracle,
        pick_rate_by_difficulty=pick_by,
    )


def fmt_pct(value: float | None) -> str:
    """A fraction as a percentage with two decimals; '-' when absent."""
    return "-" if value is None else f"{100 * value:.2f}"


def table(rows: Sequence[RunRow]) -> tuple[list[str], list[list[str]]]:
    """Headers and cells of the DESIGN.md results table."""
    ks = {r.summary.k for r in rows}
    pass_label = rows[0].summary.pass_label if len(ks) == 1 and rows else "pass@K"
    headers = ["config", "planner@1", "pipeline@1", pass_label, "majority", "selector EX", "pick rate"]
    cells = [
        [
            r.name,
            fmt_pct(r.summary.values["planner@1"]),
            fmt_pct(r.summary.values["pipeline@1"]),
            fmt_pct(r.summary.values["pass@K"]),
            fmt_pct(r.summary.values["majority"]),
            fmt_pct(r.selector_ex),
            fmt_pct(r.pick_rate),
        ]
        for r in rows
    ]
    return headers, cells


def notes(rows: Sequence[RunRow], missing: MissingPolicy = "wrong", base: Path | None = None) -> list[str]:
    """One line per run: denominators, missing databases, undefined metrics, sources (portable
    paths; ``base`` is the folder written to)."""
    policy = "scored wrong" if missing == "wrong" else "left out"
    out = []
    for r in rows:
        s = r.summary
        line = (
            f"{r.name}: {s.n_scored} questions scored, {s.n_missing_db} with a missing database ({policy}), "
            f"K={s.k if s.k is not None else 'mixed'}; rollout {portable_path(r.rollout, base)}"
            + (f", picks {portable_path(r.picks, base)}" if r.picks else ", no picks")
        )
        undefined = s.n_scored - s.n_defined["planner@1"]
        if undefined:
            line += (
                f"; planner@1/pipeline@1 over {s.n_defined['planner@1']} questions with a greedy candidate"
            )
        if r.pick_oracle is not None and not _same(r.pick_oracle, s.values["pass@K"]):
            line += (
                f"; the selector picked among more than the final candidates (a union rule): pick rate "
                f"over their oracle, {fmt_pct(r.pick_oracle)}, not {s.pass_label} {fmt_pct(s.values['pass@K'])}"
            )
        out.append(line)
    return out


def _same(a: float | None, b: float | None) -> bool:
    return (a is None and b is None) or (a is not None and b is not None and abs(a - b) < 1e-12)


FIGURE_METRICS = ("selector EX", "majority", "pass@K")


def estimates(
    rows: Sequence[RunRow], *, level: float = 0.95, n_resamples: int = 10_000, seed: int = 0
) -> list[Estimate]:
    """Selector EX, majority and pass@K of each row with a percentile bootstrap interval over
    its questions (seeded; the point value is the table's). Metrics a row lacks are left out."""
    out = []
    for r in rows:
        for metric in FIGURE_METRICS:
            vals = r.per_question.get(metric)
            if not vals:
                continue
            x = np.asarray(vals, dtype=np.float64)
            lo, hi = percentile_ci(paired_bootstrap(x, n_resamples=n_resamples, seed=seed), level)
            label = r.summary.pass_label if metric == "pass@K" else metric
            out.append(Estimate(r.name, label, float(x.mean()), lo, hi, int(x.size)))
    return out


def to_csv(rows: Sequence[RunRow]) -> str:
    """The table as CSV (percentages, empty where the Markdown shows '-')."""
    import csv
    import io

    headers, cells = table(rows)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(headers)
    w.writerows([["" if c == "-" else c for c in row] for row in cells])
    return buf.getvalue()


def _tex(text: str) -> str:
    for a, b in (("\\", "\\textbackslash{}"), ("&", "\\&"), ("%", "\\%"), ("_", "\\_"), ("#", "\\#")):
        text = text.replace(a, b)
    return text


def to_latex(rows: Sequence[RunRow], ests: Sequence[Estimate] = ()) -> str:
    """The table as a LaTeX ``tabular`` (booktabs); with ``ests``, selector EX carries its
    interval as ``54.84 {\\scriptsize [51.8, 57.9]}``."""
    headers, cells = table(rows)
    ci = {(e.config, e.metric): e for e in ests}
    body = []
    for r, row in zip(rows, cells, strict=True):
        row = list(row)
        e = ci.get((r.name, "selector EX"))
        if e is not None:
            row[5] += f" {{\\scriptsize [{100 * e.low:.1f}, {100 * e.high:.1f}]}}"
        body.append(" & ".join(_tex(row[0]) if i == 0 else c for i, c in enumerate(row)) + " \\\\")
    return "\n".join(
        [
            "% matsql report: EX in %; pick rate = selector EX / oracle of its options; [95% bootstrap CI over questions]",
            "\\begin{tabular}{l" + "r" * (len(headers) - 1) + "}",
            "\\toprule",
            " & ".join(_tex(h) for h in headers) + " \\\\",
            "\\midrule",
            *body,
            "\\bottomrule",
            "\\end{tabular}",
            "",
        ]
    )


def to_markdown(rows: Sequence[RunRow], missing: MissingPolicy = "wrong", base: Path | None = None) -> str:
    headers, cells = table(rows)
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(c) + " |" for c in cells]
    lines += [
        "",
        "EX in % (BIRD set semantics); pick rate = selector EX / the oracle of the options it picked "
        "among (pass@K, or for a union rule the union oracle), in %.",
        "",
    ]
    lines += [f"- {n}" for n in notes(rows, missing, base)]
    return "\n".join(lines) + "\n"


def to_json(rows: Sequence[RunRow], base: Path | None = None, ests: Sequence[Estimate] = ()) -> list[dict]:
    return [
        {
            "config": r.name,
            "rollout": portable_path(r.rollout, base),
            "picks": portable_path(r.picks, base) if r.picks else None,
            "n_total": r.summary.n_total,
            "n_scored": r.summary.n_scored,
            "n_missing_db": r.summary.n_missing_db,
            "k": r.summary.k,
            "metrics": r.summary.values,
            "n_defined": r.summary.n_defined,
            "selector_ex": r.selector_ex,
            "pick_rate": r.pick_rate,
            "pick_oracle": r.pick_oracle,
            "by_difficulty": {
                d: {"n_scored": s.n_scored, "metrics": s.values} for d, s in r.by_difficulty.items()
            },
            "intervals_95": {
                e.metric: {"value": e.value, "low": e.low, "high": e.high, "n": e.n}
                for e in ests
                if e.config == r.name
            },
        }
        for r in rows
    ]


def write_report(rows: Sequence[RunRow], out: Path, missing: MissingPolicy = "wrong") -> list[Path]:
    """report.md, report.csv, report.tex (the table), report.json (with 95% intervals) and
    report.png/.pdf/.svg (selector EX, majority and pass@K per team with intervals) in ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ests = estimates(rows)
    md = out / "report.md"
    md.write_text(to_markdown(rows, missing, out), encoding="utf-8")
    csv_path = out / "report.csv"
    csv_path.write_text(to_csv(rows), encoding="utf-8")
    tex = out / "report.tex"
    tex.write_text(to_latex(rows, ests), encoding="utf-8")
    js = out / "report.json"
    js.write_text(json.dumps(to_json(rows, out, ests), indent=2) + "\n", encoding="utf-8")
    figures = teams_figure(ests, out / "report") if ests else []
    return [md, csv_path, tex, js, *figures]


def comparison_markdown(result: ComparisonResult, sources: dict[str, object] | None = None) -> str:
    """A comparison as Markdown: the numbers a claim rests on, in percentage points."""
    r = result

    def pp(x: float | None) -> str:
        return "-" if x is None else f"{100 * x:+.2f}"

    lines = [
        f"# {r.name_a} vs {r.name_b}",
        "",
        f"**Verdict:** {r.verdict}",
        "",
        "| quantity | value |",
        "|---|---|",
        f"| questions (paired) | {r.n} |",
        f"| EX {r.name_a} | {fmt_pct(r.ex_a)} |",
        f"| EX {r.name_b} | {fmt_pct(r.ex_b)} |",
        f"| difference {r.name_a} - {r.name_b} (pp) | {pp(r.diff)} |",
        f"| paired bootstrap {100 * r.level:.0f}% CI (pp) | [{pp(r.ci_low)}, {pp(r.ci_high)}] |",
    ]
    if r.cluster_ci_low is not None:
        lines.append(
            f"| cluster bootstrap by db_id, {r.n_clusters} databases (pp) | [{pp(r.cluster_ci_low)}, {pp(r.cluster_ci_high)}] |"
        )
    else:
        lines.append("| cluster bootstrap by db_id | - (no db_id in the inputs) |")
    lines += [
        f"| {r.mcnemar_kind}: b ({r.name_a} only right), c ({r.name_b} only right) | b={r.mcnemar_b}, c={r.mcnemar_c} |",
        f"| p-value (two-sided) | {r.mcnemar_p:.4g} |",
        f"| minimum detectable effect (80% power, alpha 0.05, pp) | {'-' if r.mde is None else f'{100 * r.mde:.2f}'} |",
        f"| min gap (pp) | {'-' if r.min_gap_pp is None else f'{r.min_gap_pp:g}'} |",
        f"| resamples, seed | {r.n_resamples}, {r.seed} |",
    ]
    if r.n_only_a or r.n_only_b:
        lines.append(
            f"| dropped (intersect): only in {r.name_a} / only in {r.name_b} | {r.n_only_a} / {r.n_only_b} |"
        )
    for name, spread in ((r.name_a, r.seeds_a), (r.name_b, r.seeds_b)):
        if spread is not None:
            per = ", ".join(fmt_pct(x) for x in spread.ex)
            std = "-" if spread.std is None else f"{100 * spread.std:.2f}"
            lines.append(f"| {name}: EX per seed (std, pp) | {per} (std {std}) |")
    if sources:
        lines += ["", "Inputs:", ""] + [f"- {k}: {v}" for k, v in sources.items()]
    return "\n".join(lines) + "\n"
