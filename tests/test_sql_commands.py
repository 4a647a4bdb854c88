"""eval-sql: prediction files (BIRD JSON, JSONL), scoring with every failure counted, the CLI."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

import matsql.benchmarks
from matsql.benchmarks.base import Benchmark
from matsql.records import Question
from matsql.sql import Executor
from matsql.sql.commands import eval_sql
from matsql.sql.ex_eval import evaluate_predictions
from matsql.sql.predictions import BIRD_SEPARATOR, PredictionError, read_predictions
from tests.test_sql_execute import make_db

SETUP = "CREATE TABLE t (a INTEGER, b TEXT); INSERT INTO t VALUES (1, 'x'), (2, 'y'), (3, 'z');"


def q(i: int, db: str = "db1", gold: str = "SELECT a FROM t WHERE a > 1", diff: str = "simple") -> Question:
    return Question(
        question_id=f"toy-{i}", db_id=db, question=f"q{i}", gold_sql=gold, difficulty=diff, benchmark="toy"
    )


@pytest.fixture
def toy(tmp_path: Path) -> Benchmark:
    (tmp_path / "dbs" / "db1").mkdir(parents=True)
    make_db(tmp_path / "dbs" / "db1" / "db1.sqlite", SETUP)
    questions = [
        q(0),  # correct prediction
        q(1, diff="moderate"),  # wrong result
        q(2, diff="moderate"),  # prediction errors
        q(3, diff="challenging"),  # prediction times out
        q(4),  # no prediction
        q(5, db="absent"),  # database missing
        q(6, gold="SELECT nope FROM t", diff="challenging"),  # gold fails
    ]
    return Benchmark("toy", questions, tmp_path / "dbs")


PREDS = {
    "toy-0": "SELECT a FROM t WHERE a >= 2 ORDER BY a DESC;",
    "toy-1": "SELECT a FROM t",
    "toy-2": "SELECT a FROM missing_table",
    "toy-3": "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c",
    "toy-5": "SELECT 1",
    "toy-6": "SELECT nope FROM t",
}


def test_evaluate_counts_every_failure_as_wrong(toy: Benchmark) -> None:
    dbs = {db: toy.db_path(db) for db in ("db1", "absent") if toy.has_db(db)}
    with Executor(in_process=True, timeout_s=0.3) as ex:
        s = evaluate_predictions(toy.questions, PREDS, dbs, ex, benchmark="toy", n_questions=7)
    assert s.per_question == {
        "toy-0": "correct",
        "toy-1": "wrong",
        "toy-2": "pred_error",
        "toy-3": "pred_timeout",
        "toy-4": "no_prediction",
        "toy-5": "missing_db",
        "toy-6": "gold_failed",
    }
    assert (s.overall.n, s.overall.correct) == (7, 1)
    assert {k: (v.n, v.correct) for k, v in s.by_difficulty.items()} == {
        "simple": (3, 1),
        "moderate": (2, 0),
        "challenging": (2, 0),
    }
    assert s.to_json()["overall"]["ex"] == pytest.approx(1 / 7)


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_read_bird_official_json(toy: Benchmark, tmp_path: Path) -> None:
    data = {"0": f"SELECT 1{BIRD_SEPARATOR}db1", "3": "SELECT 3", "5": f"SELECT 5{BIRD_SEPARATOR}absent"}
    preds = read_predictions(write(tmp_path / "p.json", json.dumps(data)), toy.questions, "toy")
    assert preds == {"toy-0": "SELECT 1", "toy-3": "SELECT 3", "toy-5": "SELECT 5"}


def test_read_jsonl_accepts_full_and_raw_ids(toy: Benchmark, tmp_path: Path) -> None:
    lines = [
        '{"question_id": "toy-0", "sql": "SELECT 1"}',
        "",
        '{"question_id": 1, "sql": "SELECT 2"}',
        '{"question_id": "2", "sql": null}',
    ]
    preds = read_predictions(write(tmp_path / "p.jsonl", "\n".join(lines)), toy.questions, "toy")
    assert preds == {"toy-0": "SELECT 1", "toy-1": "SELECT 2"}


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        (
            "bad.jsonl",
            '{"question_id": "toy-0", "sql": "SELECT 1"}\n{"question_id": "toy-1", "sql": }',
            r"bad\.jsonl:2: malformed JSON",
        ),
        (
            "unknown.jsonl",
            '{"question_id": "toy-99", "sql": "SELECT 1"}',
            r"unknown\.jsonl:1: question_id 'toy-99'",
        ),
        ("fields.jsonl", '{"id": "toy-0", "sql": "SELECT 1"}', r"fields\.jsonl:1: expected an object"),
        (
            "dup.jsonl",
            '{"question_id": "toy-0", "sql": "a"}\n{"question_id": "0", "sql": "b"}',
            r"dup\.jsonl:2: a second",
        ),
        ("db.json", json.dumps({"0": f"SELECT 1{BIRD_SEPARATOR}other_db"}), r"db\.json: key '0'.*'other_db'"),
        ("range.json", json.dumps({"7": "SELECT 1"}), r"range\.json: key '7': position out of range"),
        ("key.json", json.dumps({"q0": "SELECT 1"}), r"key\.json: key 'q0'"),
    ],
)
def test_bad_prediction_files_name_file_and_line(
    toy: Benchmark, tmp_path: Path, name: str, text: str, message: str
) -> None:
    with pytest.raises(PredictionError, match=message):
        read_predictions(write(tmp_path / name, text), toy.questions, "toy")


def cli() -> typer.Typer:
    app = typer.Typer()
    app.command()(eval_sql)
    app.command("noop")(lambda: None)  # two commands: typer keeps the sub-command name
    return app


def test_cli_json_and_table(toy: Benchmark, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(matsql.benchmarks, "load_benchmark", lambda name, root=None: toy)
    preds = write(
        tmp_path / "p.jsonl", "\n".join(json.dumps({"question_id": k, "sql": v}) for k, v in PREDS.items())
    )
    res = CliRunner().invoke(
        cli(), ["eval-sql", str(preds), "--benchmark", "toy", "--exec-timeout", "0.3", "--json"]
    )
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert (out["overall"]["n"], out["overall"]["correct"]) == (7, 1)
    assert out["outcomes"]["missing_db"] == 1 and out["outcomes"]["no_prediction"] == 1

    res = CliRunner().invoke(
        cli(), ["eval-sql", str(preds), "-b", "toy", "--missing", "skip", "--timeout", "0.3"]
    )
    assert res.exit_code == 0, res.output
    assert "--timeout is deprecated" in res.output  # the old spelling still works
    assert "EX on toy (bird rule)" in res.output and "16.67" in res.output
    assert "set equality of result rows (BIRD official)" in " ".join(
        res.output.split()
    )  # 1 of 6: the missing-db question left out
    assert "skipped (missing database)" in res.output

    res = CliRunner().invoke(cli(), ["eval-sql", str(preds), "-b", "toy", "--missing", "error"])
    assert res.exit_code == 2 and "absent" in res.output


def test_cli_bad_input_exits_2_naming_the_line(
    toy: Benchmark, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(matsql.benchmarks, "load_benchmark", lambda name, root=None: toy)
    bad = write(tmp_path / "broken.jsonl", '{"question_id": "toy-0", "sql": "SELECT 1"}\nnot json\n')
    res = CliRunner().invoke(cli(), ["eval-sql", str(bad), "-b", "toy", "--strict"])
    assert res.exit_code == 2 and "broken.jsonl:2" in res.output
    res = CliRunner().invoke(cli(), ["eval-sql", str(bad), "-b", "toy", "--ex", "exact"])
    assert res.exit_code == 2 and "--ex" in res.output


def test_cli_on_bird_minidev_gold_scores_all_runnable(tmp_path: Path) -> None:
    """The gold SQL as predictions (BIRD official format): every runnable question correct, every
    question whose database is missing wrong."""
    root = Path(os.environ.get("MATSQL_DATA", "../shared/data"))
    if not (root / "bird" / "MINIDEV" / "mini_dev_sqlite.json").is_file():
        pytest.skip(f"BIRD mini-dev not found at {root / 'bird' / 'MINIDEV'}")
    bench = matsql.benchmarks.load_benchmark("bird-minidev", root=root)
    preds = {str(i): f"{qq.gold_sql}{BIRD_SEPARATOR}{qq.db_id}" for i, qq in enumerate(bench.questions)}
    path = write(tmp_path / "predict_dev.json", json.dumps(preds))
    res = CliRunner().invoke(
        cli(), ["eval-sql", str(path), "-b", "bird-minidev", "--data", str(root), "--json"]
    )
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["overall"]["n"] == len(bench.questions)
    assert out["overall"]["correct"] == len(bench.runnable) > 0
    assert out["outcomes"]["missing_db"] == len(bench.missing)


PEOPLE = "CREATE TABLE p (name TEXT, age INTEGER); INSERT INTO p VALUES ('ann', 30), ('bob', 40), ('cy', 20);"


@pytest.fixture
def spider(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Benchmark:
    """A two-question benchmark named spider-dev (load_benchmark patched to return it)."""
    (tmp_path / "dbs" / "people").mkdir(parents=True)
    make_db(tmp_path / "dbs" / "people" / "people.sqlite", PEOPLE)
    qs = [
        Question(
            question_id=f"spider-dev-{i}", db_id="people", question="q", gold_sql=gold, difficulty="easy"
        )
        for i, gold in enumerate(["SELECT name FROM p ORDER BY age DESC", "SELECT count(*) FROM p"])
    ]
    bench = Benchmark("spider-dev", qs, tmp_path / "dbs")
    monkeypatch.setattr(matsql.benchmarks, "load_benchmark", lambda name, root=None: bench)
    return bench


def _jsonl(path: Path, rows: list) -> Path:
    return write(path, "\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")


def test_spider_is_scored_by_its_official_rule_by_default(spider: Benchmark, tmp_path: Path) -> None:
    preds = _jsonl(
        tmp_path / "p.jsonl",
        [
            {"question_id": "spider-dev-0", "sql": "SELECT name FROM p ORDER BY age ASC"},
            {"question_id": "spider-dev-1", "sql": "SELECT count(*) FROM p"},
        ],
    )
    res = CliRunner().invoke(cli(), ["eval-sql", str(preds), "--json"])  # benchmark from the ids
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["benchmark"] == "spider-dev" and out["mode"] == "spider" and out["official_rule"] is True
    assert "Spider official" in out["rule"]
    assert out["per_question"] == {"spider-dev-0": "wrong", "spider-dev-1": "correct"}
    # BIRD's set rule on spider is allowed, but the report says it is not the official one
    res = CliRunner().invoke(cli(), ["eval-sql", str(preds), "-b", "spider-dev", "--ex", "bird", "--json"])
    out = json.loads(res.output)
    assert out["per_question"]["spider-dev-0"] == "correct" and out["official_rule"] is False
    assert "NOT spider-dev's official rule" in out["rule"]
    res = CliRunner().invoke(cli(), ["eval-sql", str(preds), "-b", "spider-dev", "--mode", "bird", "--json"])
    assert "--mode is deprecated" in res.output  # the old spelling still works
    assert json.loads(res.output[res.output.index("{") :])["mode"] == "bird"
    res = CliRunner().invoke(cli(), ["eval-sql", str(preds)])
    text = " ".join(res.output.split())
    assert "EX on spider-dev (spider rule)" in text and "EX rule: spider rule:" in text
    assert "(Spider official)" in text


def test_a_file_that_does_not_name_its_benchmark_needs_b(spider: Benchmark, tmp_path: Path) -> None:
    bird_json = write(tmp_path / "predict_dev.json", json.dumps({"0": "SELECT 1"}))
    res = CliRunner().invoke(cli(), ["eval-sql", str(bird_json)])
    assert res.exit_code == 2 and "pass -b" in res.output
    raw_ids = _jsonl(tmp_path / "raw.jsonl", [{"question_id": 0, "sql": "SELECT 1"}])
    assert CliRunner().invoke(cli(), ["eval-sql", str(raw_ids)]).exit_code == 2
    other = _jsonl(tmp_path / "other.jsonl", [{"question_id": "bird-dev-3", "sql": "SELECT 1"}])
    res = CliRunner().invoke(cli(), ["eval-sql", str(other), "-b", "spider-dev"])
    assert res.exit_code == 2 and "bird-dev's" in res.output


def test_bad_lines_are_named_and_the_rest_scored_or_refused(spider: Benchmark, tmp_path: Path) -> None:
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(
        b'{"question_id": "spider-dev-1", "sql": "SELECT count(*) FROM p"}\n'
        b'{"question_id": "spider-dev-0", "sql": \n'
        b'{"question_id": "spider-dev-0", "sql": "SELECT \xff"}\n'
        b'{"question_id": "spider-dev-9", "sql": "SELECT 1"}\n'
    )
    res = CliRunner().invoke(cli(), ["eval-sql", str(path), "-b", "spider-dev", "--json"])
    assert res.exit_code == 0, res.output
    assert "bad line(s) left unscored: 2, 3, 4" in res.output.replace("\n", " ")
    assert f"{path}:3: not UTF-8 (byte 0xff at column" in res.output.replace("\n", "")
    out = json.loads(res.output[res.output.index("{\n") :])
    assert out["per_question"] == {"spider-dev-0": "no_prediction", "spider-dev-1": "correct"}
    assert len(out["bad_lines"]) == 3
    res = CliRunner().invoke(cli(), ["eval-sql", str(path), "-b", "spider-dev", "--strict"])
    assert res.exit_code == 2 and "3 bad line(s): 2, 3, 4" in " ".join(res.output.split())


def test_outcomes_file_is_what_compare_reads(spider: Benchmark, tmp_path: Path) -> None:
    import gzip

    from matsql.evaluate.outcomes import load_rows

    picks = tmp_path / "picks.jsonl.gz"  # a selector's picks file: question_id + sql + more
    with gzip.open(picks, "wt") as fh:
        for i, sql in enumerate(["SELECT name FROM p ORDER BY age DESC", "SELECT 0"]):
            fh.write(json.dumps({"question_id": f"spider-dev-{i}", "sql": sql, "candidate_index": 0}) + "\n")
    out = tmp_path / "outcomes.jsonl.gz"
    res = CliRunner().invoke(cli(), ["eval-sql", str(picks), "--out", str(out)])
    assert res.exit_code == 0, res.output
    rows = {r.question_id: r for r in load_rows(out)}
    assert {q: r.correct for q, r in rows.items()} == {"spider-dev-0": 1.0, "spider-dev-1": 0.0}
    assert rows["spider-dev-1"].db_id == "people" and rows["spider-dev-1"].extra["rule"] == "spider"


def test_limit_scores_the_first_questions_and_refuses_predictions_beyond(
    spider: Benchmark, tmp_path: Path
) -> None:
    one = _jsonl(
        tmp_path / "one.jsonl",
        [{"question_id": "spider-dev-0", "sql": "SELECT name FROM p ORDER BY age DESC"}],
    )
    res = CliRunner().invoke(cli(), ["eval-sql", str(one), "--limit", "1", "--json"])
    out = json.loads(res.output)
    assert (out["overall"]["n"], out["overall"]["correct"], out["n_skipped_missing_db"]) == (1, 1, 0)
    two = _jsonl(tmp_path / "two.jsonl", [{"question_id": "spider-dev-1", "sql": "SELECT 1"}])
    res = CliRunner().invoke(cli(), ["eval-sql", str(two), "--limit", "1"])
    assert res.exit_code == 2 and "beyond the first 1 questions" in " ".join(res.output.split())


def test_a_rollout_file_is_rescored_by_its_greedy_candidate(spider: Benchmark, tmp_path: Path) -> None:
    from matsql.records import dumps
    from tests.record_builders import cand, ok, record

    recs = [
        record(  # planner SQL orders the wrong way; the fixer repairs it
            "spider-dev-0",
            [
                cand(
                    0,
                    "SELECT name FROM p ORDER BY age ASC",
                    ok("a"),
                    True,  # what BIRD's set rule said
                    verdicts=("incorrect", "correct"),
                    fix=("SELECT name FROM p ORDER BY age DESC", ok("a"), True),
                    gate=True,
                    greedy=True,
                ),
                cand(1, "SELECT 0", ok("b"), False),
            ],
            db="people",
        ),
        record("spider-dev-1", [cand(0, "SELECT 1", ok("c"), False)], db="people"),  # no greedy one
    ]
    path = tmp_path / "r.jsonl"
    path.write_text("".join(dumps(r) + "\n" for r in recs[:1]))

    def run(metric: str) -> dict:
        res = CliRunner().invoke(
            cli(), ["eval-sql", str(path), "-b", "spider-dev", "--rollout-metric", metric, "--json"]
        )
        assert res.exit_code == 0, res.output
        return json.loads(res.output)["per_question"]

    assert run("planner@1") == {"spider-dev-0": "wrong", "spider-dev-1": "no_prediction"}
    assert run("pipeline@1")["spider-dev-0"] == "correct"
    path.write_text("".join(dumps(r) + "\n" for r in recs))
    res = CliRunner().invoke(
        cli(), ["eval-sql", str(path), "-b", "spider-dev", "--rollout-metric", "planner@1"]
    )
    assert res.exit_code == 2 and "spider-dev-1 has no greedy candidate" in " ".join(res.output.split())


def test_a_corrupt_database_is_named_once_and_its_questions_counted_wrong(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "dbs" / "bad").mkdir(parents=True)
    (tmp_path / "dbs" / "bad" / "bad.sqlite").write_bytes(b"this is not a database" * 100)
    qs = [
        Question(
            question_id=f"spider-dev-{i}",
            db_id="bad",
            question="q",
            gold_sql="SELECT name FROM sqlite_master",
            difficulty="easy",
        )
        for i in range(2)
    ]
    bench = Benchmark("spider-dev", qs, tmp_path / "dbs")
    monkeypatch.setattr(matsql.benchmarks, "load_benchmark", lambda name, root=None: bench)
    preds = _jsonl(
        tmp_path / "p.jsonl", [{"question_id": f"spider-dev-{i}", "sql": "SELECT 1"} for i in range(2)]
    )
    res = CliRunner().invoke(cli(), ["eval-sql", str(preds), "--workers", "1"])
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert text.count("is corrupt") == 1 and "bad.sqlite" in text and "2 question(s) counted wrong" in text
    assert "corrupt database │ 2" in text


def test_rollout_majority_and_pass_at_k_are_rescored_from_every_candidate(
    spider: Benchmark, tmp_path: Path
) -> None:
    from matsql.records import dumps
    from tests.record_builders import cand, ok, record

    rec = record(
        "spider-dev-1",  # gold: SELECT count(*) FROM p (3 rows in p)
        [
            cand(0, "SELECT 0", ok("zero"), False, greedy=True),
            cand(1, "SELECT 0 + 0", ok("zero"), False),  # the vote: two candidates return 0
            cand(2, "SELECT count(*) FROM p", ok("three"), True),
        ],
        db="people",
    )
    path = tmp_path / "r.jsonl.gz"
    import gzip

    with gzip.open(path, "wt") as fh:
        fh.write(dumps(rec) + "\n")

    def outcome(metric: str) -> str:
        args = ["eval-sql", str(path), "-b", "spider-dev", "--rollout-metric", metric, "--json"]
        res = CliRunner().invoke(cli(), args)
        assert res.exit_code == 0, res.output
        return json.loads(res.output)["per_question"]["spider-dev-1"]

    assert (outcome("pipeline@1"), outcome("majority"), outcome("pass@k")) == ("wrong", "wrong", "correct")
