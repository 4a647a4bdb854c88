"""The results table (report) and the metrics command over run folders and rollout files."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from matsql.evaluate.commands import metrics, report
from matsql.evaluate.metrics import score_records, summarize
from matsql.evaluate.outcomes import OutcomeError, OutcomeRow, write_outcomes
from matsql.evaluate.report import build_row, table, to_markdown, write_report
from matsql.records import RolloutHeader, RolloutRecord, dumps

FIXTURES = Path(__file__).parent / "fixtures" / "metrics"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

app = typer.Typer()
app.command("report")(report)
app.command("metrics")(metrics)
runner = CliRunner()


def _records() -> list[RolloutRecord]:
    return [
        RolloutRecord.model_validate(json.loads(p.read_text())["record"])
        for p in sorted(FIXTURES.glob("case_*.json"))
    ]


def _expected() -> dict:
    return json.loads((FIXTURES / "summary.json").read_text())


def _run_folder(root: Path, records: list[RolloutRecord], picks: dict[str, bool] | None) -> Path:
    root.mkdir(parents=True)
    header = RolloutHeader(matsql_version="0", config_hash="h", config={}, created="2025-01-01T00:00:00Z")
    (root / "rollout.jsonl").write_text(
        "\n".join([dumps(header), *(dumps(r) for r in records)]) + "\n", encoding="utf-8"
    )
    if picks is not None:
        write_outcomes(
            root / "picks.jsonl", [OutcomeRow(q, float(c), extra={"pick": 0}) for q, c in picks.items()]
        )
    return root


# Selector picks for the runnable fixture questions (q-d has a missing database).
PICKS = {"q-a": True, "q-b": True, "q-c": False, "q-e": True, "q-f": False, "q-g": False}


def test_row_with_picks(tmp_path: Path) -> None:
    run = _run_folder(tmp_path / "collab", _records(), PICKS)
    row = build_row(run)
    want = _expected()["wrong"]
    assert row.name == "collab"
    assert row.summary.values["majority"] == pytest.approx(want["values"]["majority"])
    # Selector EX counts the missing-database question as wrong: 3 right of 7.
    assert row.selector_ex == pytest.approx(sum(PICKS.values()) / 7)
    assert row.pick_rate == pytest.approx(row.selector_ex / want["values"]["pass@K"])
    assert row.selector_by_difficulty["simple"] == pytest.approx(1 / 3)  # q-a right; q-c, q-g wrong
    assert row.selector_by_difficulty["challenging"] == pytest.approx(0.0)  # q-d missing, q-f wrong
    skip = build_row(run, missing="skip")
    assert skip.selector_ex == pytest.approx(sum(PICKS.values()) / 6)


def test_gzipped_run_folder_reads_like_plain(tmp_path: Path) -> None:
    """Committed results keep rollout.jsonl.gz and picks.jsonl.gz; the row must not change."""
    plain = _run_folder(tmp_path / "plain", _records(), PICKS)
    packed = tmp_path / "packed"
    packed.mkdir()
    for name in ("rollout.jsonl", "picks.jsonl"):
        (packed / f"{name}.gz").write_bytes(gzip.compress((plain / name).read_bytes()))
    a, b = build_row(plain), build_row(packed)
    assert b.picks is not None and b.picks.name == "picks.jsonl.gz"
    assert (b.summary.values, b.selector_ex) == (a.summary.values, a.selector_ex)


def test_row_without_picks_shows_dashes(tmp_path: Path) -> None:
    run = _run_folder(tmp_path / "indep", _records(), None)
    headers, cells = table([build_row(run), build_row(run / "rollout.jsonl", "file")])
    assert headers == ["config", "planner@1", "pipeline@1", "pass@K", "majority", "selector EX", "pick rate"]
    assert cells[0][0] == "indep" and cells[1][0] == "file"
    assert cells[0][-2:] == ["-", "-"]
    want = _expected()["wrong"]["values"]
    assert cells[0][1:5] == [
        f"{100 * want[m]:.2f}" for m in ("planner@1", "pipeline@1", "pass@K", "majority")
    ]


def test_pass_header_names_common_k(tmp_path: Path) -> None:
    k4 = [r for r in _records() if len(r.candidates) == 4]
    run = _run_folder(tmp_path / "k4", k4, None)
    headers, _ = table([build_row(run)])
    assert headers[3] == "pass@4"


def test_picks_must_cover_runnable_questions(tmp_path: Path) -> None:
    partial = {q: c for q, c in PICKS.items() if q != "q-e"}
    run = _run_folder(tmp_path / "r1", _records(), partial)
    with pytest.raises(OutcomeError, match="no pick for runnable questions: q-e"):
        build_row(run)
    run = _run_folder(tmp_path / "r2", _records(), {**PICKS, "q-zz": True})
    with pytest.raises(OutcomeError, match="not in the rollout: q-zz"):
        build_row(run)
    (tmp_path / "empty").mkdir()
    with pytest.raises(OutcomeError, match=r"without rollout\.jsonl"):
        build_row(tmp_path / "empty")


def test_markdown_and_files(tmp_path: Path) -> None:
    rows = [
        build_row(_run_folder(tmp_path / "collab", _records(), PICKS)),
        build_row(_run_folder(tmp_path / "indep", _records(), None)),
    ]
    md = to_markdown(rows)
    lines = md.splitlines()
    assert lines[0] == "| config | planner@1 | pipeline@1 | pass@K | majority | selector EX | pick rate |"
    assert lines[1] == "|---|---|---|---|---|---|---|"
    assert lines[2].startswith("| collab | ") and lines[3].endswith("| - | - |")
    assert "7 questions scored, 1 with a missing database (scored wrong)" in md
    assert "planner@1/pipeline@1 over 5 questions with a greedy candidate" in md
    out = tmp_path / "out"
    paths = write_report(rows, out)
    assert [p.name for p in paths] == [
        "report.md",
        "report.csv",
        "report.tex",
        "report.json",
        "report.png",
        "report.pdf",
        "report.svg",
    ]
    written = (out / "report.md").read_text()
    assert written == to_markdown(rows, base=out)
    assert written.splitlines()[:4] == lines[:4]  # the table itself does not depend on the folder
    assert (out / "report.png").read_bytes()[:8] == PNG_MAGIC
    assert (out / "report.pdf").read_bytes()[:5] == b"%PDF-"
    assert "<svg" in (out / "report.svg").read_text()
    js = json.loads((out / "report.json").read_text())
    assert js[0]["selector_ex"] == pytest.approx(rows[0].selector_ex) and js[1]["selector_ex"] is None
    assert js[0]["n_missing_db"] == 1
    # portable: the run folders are named from the folder they share with OUT, never absolutely
    assert str(tmp_path) not in written and str(tmp_path) not in (out / "report.json").read_text()
    assert js[0]["rollout"] == f"{tmp_path.name}/collab/rollout.jsonl"
    # CSV and LaTeX carry the same cells as the Markdown table
    csv_lines = (out / "report.csv").read_text().splitlines()
    assert csv_lines[0] == "config,planner@1,pipeline@1,pass@K,majority,selector EX,pick rate"
    assert csv_lines[2].endswith(",,")  # no picks: empty, not '-'
    md_cells = [c.strip() for c in lines[2].strip("|").split("|")]
    assert csv_lines[1].split(",") == md_cells
    tex = (out / "report.tex").read_text()
    assert "\\begin{tabular}{lrrrrrr}" in tex and "\\toprule" in tex
    assert f"collab & {' & '.join(md_cells[1:5])} & {md_cells[5]} {{\\scriptsize [" in tex
    # intervals: the point value is the table's, the interval contains it
    iv = js[0]["intervals_95"]
    assert set(iv) == {"selector EX", "majority", "pass@K"} and set(js[1]["intervals_95"]) == {
        "majority",
        "pass@K",
    }
    assert iv["selector EX"]["value"] == pytest.approx(rows[0].selector_ex)
    assert iv["pass@K"]["value"] == pytest.approx(rows[0].summary.values["pass@K"])
    for e in iv.values():
        assert e["low"] <= e["value"] <= e["high"] and e["n"] == 7


def test_estimates_are_bootstrap_intervals_of_the_table_values(tmp_path: Path) -> None:
    from matsql.evaluate.report import estimates
    from matsql.evaluate.statistics import paired_bootstrap, percentile_ci

    row = build_row(_run_folder(tmp_path / "collab", _records(), PICKS))
    ests = {e.metric: e for e in estimates([row], n_resamples=500, seed=3)}
    sel = [1.0, 1.0, 0.0, 0.0, 1.0, 0.0, 0.0]  # PICKS in question order, q-d (missing db) wrong
    assert sorted(row.per_question["selector EX"]) == sorted(sel)
    lo, hi = percentile_ci(
        paired_bootstrap(np.asarray(row.per_question["selector EX"]), n_resamples=500, seed=3)
    )
    assert (ests["selector EX"].low, ests["selector EX"].high) == (lo, hi)
    assert ests["selector EX"].value == pytest.approx(3 / 7)
    assert ests["majority"].value == pytest.approx(row.summary.values["majority"])


def test_report_cli(tmp_path: Path) -> None:
    a = _run_folder(tmp_path / "a", _records(), PICKS)
    b = _run_folder(tmp_path / "b", _records(), None)
    res = runner.invoke(
        app, ["report", str(a), str(b), "--name", "COLLAB", "--name", "INDEP", "--out", str(tmp_path / "rep")]
    )
    assert res.exit_code == 0, res.output
    assert "| COLLAB | " in res.stdout and "| INDEP | " in res.stdout
    for suffix in ("md", "csv", "tex", "json", "png", "pdf", "svg"):
        assert (tmp_path / "rep" / f"report.{suffix}").is_file(), suffix
    res = runner.invoke(app, ["report", str(a), str(b), "--name", "only-one"])
    assert res.exit_code == 2 and "2 runs" in res.stderr
    res = runner.invoke(app, ["report", str(tmp_path / "missing")])
    assert res.exit_code == 2 and "no such run folder" in res.stderr


def test_metrics_cli_json_and_table(tmp_path: Path) -> None:
    run = _run_folder(tmp_path / "r", _records(), PICKS)
    res = runner.invoke(app, ["metrics", str(run / "rollout.jsonl"), str(run), "--json"])
    assert res.exit_code == 0, res.output
    payload = json.loads(res.stdout)
    want = summarize(score_records(_records()))
    assert payload[0]["metrics"] == pytest.approx(want.values)
    assert payload[0]["selector_ex"] is None and payload[1]["selector_ex"] == pytest.approx(3 / 7)
    res = runner.invoke(app, ["metrics", str(run), "--by-difficulty", "--missing", "skip"])
    assert res.exit_code == 0, res.output
    for label in ("simple", "moderate", "challenging", "sample@1", "majority"):
        assert label in res.stdout
    res = runner.invoke(app, ["metrics", str(run), "--missing", "maybe"])
    assert res.exit_code == 2


def test_metrics_common_scores_the_questions_every_file_holds(tmp_path: Path) -> None:
    """An unfinished run beside a finished one: --common compares them on the same questions."""
    recs = _records()
    full = _run_folder(tmp_path / "full", recs, PICKS)
    part = _run_folder(tmp_path / "part", recs[:3], None)
    res = runner.invoke(app, ["metrics", str(full), str(part), "--json", "--common"])
    assert res.exit_code == 0, res.output
    got = json.loads(res.stdout)
    want = summarize(score_records(recs[:3]))
    assert got[0]["metrics"] == pytest.approx(want.values) == got[1]["metrics"]
    kept = {r.question_id for r in recs[:3]}
    hits = [float(c) for q, c in PICKS.items() if q in kept]
    missing = sum(1 for r in recs[:3] if r.question_id not in PICKS)  # a missing database: wrong
    assert got[0]["selector_ex"] == pytest.approx(sum(hits) / (len(hits) + missing))
    res = runner.invoke(app, ["metrics", str(full), str(part), "--json"])
    assert json.loads(res.stdout)[0]["metrics"] != got[0]["metrics"]  # without it, all of full


def test_pick_rate_of_a_union_rule_divides_by_the_union_oracle(tmp_path: Path) -> None:
    """union-vote may pick a right planner SQL that the fixer replaced, on a question where every
    final candidate is wrong: the pick rate divides by the oracle of what it picked among (the
    union), never passing 100%, and the note says which oracle that is."""
    from matsql.cli import app as matsql_app
    from tests.record_builders import cand, ok, record

    # q1: three right planner queries, each broken by a false alarm (distinct wrong results): the
    # final candidates hold no right one, the union has three votes for the right result
    q1 = record(
        "q1",
        [
            cand(
                i,
                "SELECT g",
                ok("G"),
                True,
                ("incorrect", "correct"),
                (f"SELECT w{i}", ok(f"W{i}"), False),
                gate=True,
            )
            for i in range(3)
        ],
    )
    q2 = record("q2", [cand(i, "SELECT g", ok("G"), True, ("correct", "correct")) for i in range(3)])
    run = _run_folder(tmp_path / "team", [q1, q2], None)
    res = CliRunner().invoke(
        matsql_app,
        ["select", str(run / "rollout.jsonl"), "--method", "union-vote", "--out", str(run / "picks.jsonl")],
    )
    assert res.exit_code == 0, res.output
    row = build_row(run)
    assert row.summary.values["pass@K"] == pytest.approx(0.5)  # the final candidates: q2 only
    assert row.selector_ex == pytest.approx(1.0)  # the union vote gets both right
    assert row.pick_oracle == pytest.approx(1.0) and row.pick_rate == pytest.approx(1.0)  # was 2.0
    assert row.pick_rate_by_difficulty == {"simple": pytest.approx(1.0)}
    md = to_markdown([row])
    assert "pick rate over their oracle, 100.00, not pass@3 50.00" in md
    # majority picks among the final candidates: its oracle is pass@K and the note stays silent
    res = CliRunner().invoke(
        matsql_app,
        ["select", str(run / "rollout.jsonl"), "--method", "majority", "--out", str(run / "picks.jsonl")],
    )
    assert res.exit_code == 0, res.output
    row = build_row(run)
    assert row.selector_ex == pytest.approx(0.5) and row.pick_rate == pytest.approx(1.0)
    assert row.pick_oracle == pytest.approx(row.summary.values["pass@K"])
    assert "their oracle" not in to_markdown([row])
