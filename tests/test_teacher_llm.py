"""LLM validator teacher (issue 21): the prompt template, the execution-grounded acceptance of a
critique, resampling then rule-based fallback, rows that name their teacher, through a fake
backend in process and the repo's HTTP test server, and `matsql train sft-data --teacher`."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from matsql.agents import validator
from matsql.backends.registry import make_backend
from matsql.backends.server import OpenAIServer
from matsql.labels import sft_data as sd
from matsql.labels import teacher as tch
from matsql.records import AgentOutput, Candidate, ExecInfo, Question, RolloutRecord, dumps
from matsql.train.commands import train_app
from tests.teacher_fakes import ScriptedTeacher

ROOT = Path(__file__).resolve().parents[1]
GOLD = "SELECT name FROM singer WHERE age > 30"
RIGHT, WRONG, BROKEN = GOLD, "SELECT age FROM singer WHERE age > 30", "SELECT nme FROM singer"
# RIGHT agrees at once, WRONG disagrees once then agrees, BROKEN never agrees
SCRIPT = {RIGHT: ["agree"], WRONG: ["disagree", "agree"], BROKEN: ["disagree"]}


def schema(db_id: str) -> str:
    return f"CREATE TABLE singer (singer_id, name, age); -- {db_id}"


def ok(d: str) -> ExecInfo:
    return ExecInfo(status="ok", rows_digest=d, n_rows=2, preview=f"rows {d}")


def record(qid: str = "q1") -> RolloutRecord:
    q = Question(question_id=qid, db_id="concert_singer", question="Who is older than 30?", gold_sql=GOLD)
    cands = [
        Candidate(index=0, planner=AgentOutput(text="", sql=RIGHT), exec=ok("g"), correct=True),
        Candidate(index=1, planner=AgentOutput(text="", sql=WRONG), exec=ok("w"), correct=False),
        Candidate(
            index=2,
            planner=AgentOutput(text="", sql=BROKEN),
            exec=ExecInfo(status="error", error="no such column: nme"),
            correct=False,
        ),
    ]
    return RolloutRecord(question=q, gold_exec=ok("g"), candidates=cands)


def teacher_spec(resamples: int = 2, model_id: str = "fake:scripted") -> tch.LLMTeacher:
    return tch.LLMTeacher(backend={"backend": "fake"}, model_id=model_id, resamples=resamples, seed=7)


def by_sql(rows: list[dict]) -> dict[str, dict]:
    return {r["prompt"][-1]["content"].split("```sql\n")[1].split("\n```")[0]: r for r in rows}


# ---------------------------------------------------------------- template and prompt


@pytest.mark.parametrize("agent", ["val-sel", "val-cond"])
def test_shipped_template_is_versioned_and_tells_the_teacher_both_results_and_the_verdict(agent):
    tpl = tch.teacher_template(agent)
    assert tpl.id == f"teacher-llm-{agent}@v1" and tpl.template.prefix == validator.prefix(agent)
    rec = record()
    c = rec.candidates[1]
    p = tch.teacher_prompt(
        agent, rec.question, schema("x"), c.planner.sql, c.exec, rec.gold_exec, "incorrect"
    )
    user = p.messages[-1][1]
    assert GOLD in user and WRONG in user and "rows w" in user and "rows g" in user
    assert "The candidate is incorrect." in user and tpl.outcomes["different"] in user
    assert p.prefix == validator.prefix(agent)
    broken = rec.candidates[2]
    failed = tch.teacher_prompt(
        agent, rec.question, "s", broken.planner.sql, broken.exec, rec.gold_exec, "incorrect"
    )
    assert (
        tpl.outcomes["failed"] in failed.messages[-1][1] and "no such column: nme" in failed.messages[-1][1]
    )


def test_a_template_with_an_unknown_field_or_another_prefix_is_refused():
    good = (ROOT / "src/matsql/labels/templates/teacher-llm-val-sel.yaml").read_text()
    tch.parse_teacher_template("t", good, "val-sel")
    with pytest.raises(ValueError, match="prefix"):
        tch.parse_teacher_template("t", good, "val-cond")
    with pytest.raises(ValueError, match="unknown fields"):
        tch.parse_teacher_template("t", good.replace("{gold_sql}", "{gold}"), "val-sel")
    with pytest.raises(ValueError, match="version"):
        tch.parse_teacher_template("t", good.replace("version: 1", "version: 0"), "val-sel")


# ---------------------------------------------------------------- acceptance


@pytest.mark.parametrize(
    ("text", "target", "why"),
    [
        (
            " It returns names.\nConclude: incorrect\nMore chat.",
            " It returns names.\nConclude: incorrect",
            "ok",
        ),
        (" It returns names.\n**Conclude:** Incorrect", " It returns names.\nConclude: incorrect", "ok"),
        (" Looks right.\nConclude: correct", None, "disagree"),
        (" Wrong.\nConclude: incorrect\nOn second thought, Conclude: correct", None, "disagree"),
        (" No verdict here.", None, "no_verdict"),
        (" Hmm.\nConclude: maybe", None, "no_verdict"),
        ("\nConclude: incorrect", None, "empty"),
        (" Unlike the reference query it keeps age.\nConclude: incorrect", None, "mentions_reference"),
    ],
)
def test_accept_keeps_only_critiques_that_conclude_the_execution_verdict(text, target, why):
    assert tch.accept(text, "incorrect", tch.teacher_template("val-sel")) == (target, why)


# ---------------------------------------------------------------- resampling and fallback


def test_a_disagreeing_critique_is_resampled_then_replaced_by_the_rule_based_one():
    rec = record()
    jobs = []
    for c in rec.candidates:
        rule = tch.critique("val-sel", c.planner.sql, c.exec, GOLD, rec.gold_exec)
        p = tch.teacher_prompt(
            "val-sel", rec.question, "s", c.planner.sql, c.exec, rec.gold_exec, rule.verdict
        )
        jobs.append(tch.TeacherJob("val-sel", p, rule))
    fake = ScriptedTeacher(SCRIPT)
    written, report = tch.write_critiques(fake, teacher_spec(resamples=2), jobs)

    # attempt 0 asks all three; WRONG and BROKEN are asked again; then BROKEN alone
    assert [sorted(c["sqls"]) for c in fake.calls] == [
        sorted([RIGHT, WRONG, BROKEN]),
        sorted([WRONG, BROKEN]),
        [BROKEN],
    ]
    seeds = [c["seed"] for c in fake.calls]
    assert len(set(seeds)) == 3 and seeds[0] == tch.attempt_seed(7, 0)
    assert all(c["temperature"] == 0.7 for c in fake.calls)
    assert report.as_dict() == {
        "critiques": 3,
        "first_try": 1,
        "resamples": 3,
        "recovered": 1,
        "fallbacks": 1,
        "rejected": {"disagree": 4},
    }
    right, wrong, broken = written
    assert (
        right.verdict == "correct"
        and right.text.endswith("\nConclude: correct")
        and "Thanks" not in right.text
    )
    assert (right.teacher, right.template, right.seed, right.attempts) == (
        "fake:scripted",
        "teacher-llm-val-sel@v1",
        seeds[0],
        1,
    )
    assert wrong.reason == "llm" and wrong.seed == seeds[1] and wrong.attempts == 2
    assert wrong.text.startswith(" Sample ") and wrong.text.endswith("Conclude: incorrect")
    assert broken.text == jobs[2].rule.text and broken.verdict == "incorrect"
    assert (broken.teacher, broken.template, broken.seed) == (tch.RULE_TEACHER, "teacher@v1", None)
    assert broken.reason == f"fallback:{jobs[2].rule.reason}" and broken.attempts == 3


def test_no_resamples_means_straight_to_the_fallback():
    rec = record()
    c = rec.candidates[1]
    rule = tch.critique("val-cond", c.planner.sql, c.exec, GOLD, rec.gold_exec)
    p = tch.teacher_prompt("val-cond", rec.question, "s", c.planner.sql, c.exec, rec.gold_exec, rule.verdict)
    fake = ScriptedTeacher({WRONG: ["silent", "agree"]})
    written, report = tch.write_critiques(
        fake, teacher_spec(resamples=0), [tch.TeacherJob("val-cond", p, rule)]
    )
    assert len(fake.calls) == 1 and report.fallbacks == 1 and report.rejected == {"no_verdict": 1}
    assert written[0].text == rule.text


# ---------------------------------------------------------------- through the HTTP test server


@pytest.fixture
def served() -> Iterator[tuple[OpenAIServer, ScriptedTeacher]]:
    fake = ScriptedTeacher(SCRIPT)
    server = OpenAIServer(fake, model_name="qwen2.5-72b-instruct")
    with server.running():
        yield server, fake


def test_validator_rows_through_the_http_server_name_their_teacher_and_keep_trl_columns(served, tmp_path):
    server, fake = served
    spec = tch.LLMTeacher(
        backend={
            "backend": "openai",
            "base_url": server.url,
            "model": "qwen2.5-72b-instruct",
            "max_retries": 0,
        },
        model_id=f"openai:{server.url}/qwen2.5-72b-instruct",
        resamples=1,
        seed=3,
    )
    backend = make_backend(spec.backend, agent="teacher")
    try:
        built = sd.validator_examples(
            [record()], schema, "val-sel", max_per_question=None, llm=(backend, spec)
        )
    finally:
        backend.close()
    plain = sd.validator_examples([record()], schema, "val-sel", max_per_question=None)
    assert "teacher" not in plain.rows[0]  # the rule-based default writes what it always wrote
    assert built.teacher is not None and built.teacher.as_dict()["fallbacks"] == 1
    # one request per prompt: 3 first tries, WRONG and BROKEN once more; each continues the student's prefix
    assert len(fake.calls) == 5 and all(c["prefixes"] == ["SELECT."] for c in fake.calls)
    rows, base = by_sql(built.rows), by_sql(plain.rows)
    for sql, r in rows.items():
        assert r["prompt"] == base[sql]["prompt"] and r["label"] == base[sql]["label"]
        assert GOLD not in r["prompt"][-1]["content"] or sql == GOLD  # the student never sees gold
        assert validator.parse(r["completion"][0]["content"]) == r["label"]
    assert rows[RIGHT]["teacher"] == rows[WRONG]["teacher"] == f"openai:{server.url}/qwen2.5-72b-instruct"
    assert rows[WRONG]["teacher_template"] == "teacher-llm-val-sel@v1"
    assert rows[WRONG]["teacher_seed"] == str(tch.attempt_seed(3, 1)) and rows[WRONG]["reason"] == "llm"
    assert rows[WRONG]["completion"][0]["content"].startswith("SELECT. Sample ")
    assert rows[BROKEN]["teacher"] == tch.RULE_TEACHER and rows[BROKEN]["teacher_seed"] == ""
    assert rows[BROKEN]["completion"] == base[BROKEN]["completion"]

    pytest.importorskip("datasets")
    from datasets import load_from_disk

    from matsql.train.config import Source
    from matsql.train.data import normalise_row, read_source

    sd.write_sft(built.rows, tmp_path, "val-sel", test_ids=set())
    train = load_from_disk(str(tmp_path / "val-sel"))["train"]
    assert {"prompt", "completion", "prefix", *sd.TEACHER_COLUMNS} <= set(train.column_names)
    n = normalise_row(read_source(Source(path=str(tmp_path / "val-sel"), split="train"))[0], "sft", "x")
    assert n["prefix"] == "SELECT." and n["completion"].endswith(f"Conclude: {train[0]['label']}")


# ---------------------------------------------------------------- the team file and the CLI


def test_load_teacher_from_an_agents_entry_or_a_top_level_entry(tmp_path):
    f = tmp_path / "team.yaml"
    f.write_text(
        "defaults: {backend: openai, base_url: 'http://node1:8000', concurrency: 8, temperature: 1.0}\n"
        "agents:\n  teacher: {model: qwen72b, max_tokens: 300, api_key: sk-secret}\n"
    )
    t = tch.load_teacher(f, resamples=5, seed=1)
    assert t.model_id == "openai:http://node1:8000/qwen72b" and (t.temperature, t.max_tokens) == (1.0, 300)
    assert t.backend["concurrency"] == 8 and "temperature" not in t.backend and t.resamples == 5
    ident = t.identity(["val-sel"])
    assert (
        "api_key" not in ident["backend"] and ident["templates"]["val-sel"]["id"] == "teacher-llm-val-sel@v1"
    )
    f.write_text(
        "agents: {planner: {model: small}}\nteacher: {backend: vllm, model: ./weights, max_model_len: 8192}\n"
    )
    t = tch.load_teacher(f)
    assert t.backend == {
        "backend": "vllm",
        "model": str((tmp_path / "weights").resolve()),
        "max_model_len": 8192,
    }
    assert t.model_id == f"vllm:{(tmp_path / 'weights').resolve()}"
    f.write_text("agents: {planner: {model: small}}\n")
    with pytest.raises(ValueError, match="name the teacher once"):
        tch.load_teacher(f)
    f.write_text("teacher: {backend: openai, base_url: 'http://h', model: m, temprature: 1.0, stop: '```'}\n")
    with pytest.raises(ValueError, match="teacher: unknown key 'temprature' \\(did you mean 'temperature'"):
        tch.load_teacher(f)
    f.write_text("teacher: {backend: openai, base_url: 'http://h', model: m, stop: '```'}\n")
    assert tch.load_teacher(f).stop == ("```",)  # one stop string stays one, as in team files


def _rollout(tmp_path: Path) -> Path:
    from matsql.benchmarks import load_benchmark

    qs = load_benchmark("minibench-train").runnable[:2]
    path = tmp_path / "rollout.jsonl"
    with path.open("w") as fh:
        for q in qs:
            g = ok("g")
            cands = [
                Candidate(index=0, planner=AgentOutput(text="", sql=q.gold_sql), exec=g, correct=True),
                Candidate(index=1, planner=AgentOutput(text="", sql="SELECT 1"), exec=ok("w"), correct=False),
            ]
            fh.write(dumps(RolloutRecord(question=q, gold_exec=g, candidates=cands)) + "\n")
    return path


def _sft_data(rollout: Path, out: Path, *extra: str):
    args = ["sft-data", "--agent", "val-sel", "--benchmark", "minibench-train", "--rollouts", str(rollout)]
    return CliRunner().invoke(
        train_app, [*args, "--out", str(out), "--test-frac", "0", *extra], catch_exceptions=False
    )


def test_cli_teacher_from_a_served_team_file_prints_and_records_counts(served, tmp_path):
    pytest.importorskip("datasets")
    server, fake = served
    rollout = _rollout(tmp_path)
    fake.script = {"SELECT 1": ["disagree"]}  # the wrong candidates never agree: 2 fallbacks
    team = tmp_path / "teacher.yaml"
    team.write_text(
        f"defaults: {{backend: openai, base_url: '{server.url}', max_retries: 0}}\n"
        "agents:\n  teacher: {model: qwen2.5-72b-instruct, temperature: 0.8, max_tokens: 200}\n"
    )
    res = _sft_data(rollout, tmp_path / "llm", "--teacher", str(team), "--teacher-resamples", "2")
    assert res.exit_code == 0, res.output
    # 2 wrong candidates x 2 resamples; 2 x 3 rejections
    assert "4 resamples (0 recovered), 2 fallbacks to rule-based; rejected: disagree 6" in res.output
    meta = json.loads((tmp_path / "llm" / "sft_data.json").read_text())
    assert meta["agents"]["val-sel"]["teacher"]["fallbacks"] == 2
    assert meta["teacher"]["model"] == f"openai:{server.url}/qwen2.5-72b-instruct"
    assert meta["teacher"]["templates"]["val-sel"]["id"] == "teacher-llm-val-sel@v1"
    rows = [json.loads(x) for x in (tmp_path / "llm" / "val-sel.jsonl").read_text().splitlines()]
    assert {r["teacher"] for r in rows} == {meta["teacher"]["model"], tch.RULE_TEACHER}
    # the config hash covers the teacher: another template digest or resample count changes it
    res = _sft_data(rollout, tmp_path / "llm2", "--teacher", str(team), "--teacher-resamples", "1")
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "llm2" / "sft_data.json").read_text())["config_hash"] != meta["config_hash"]


def test_cli_teacher_goes_through_make_backend_whatever_the_backend(monkeypatch, tmp_path):
    """A `backend: vllm` teacher (or any other) reaches the registry untouched."""
    pytest.importorskip("datasets")
    rollout = _rollout(tmp_path)
    got: list[dict] = []
    fake = ScriptedTeacher()

    def fake_make_backend(cfg, *, agent=None):
        got.append({**cfg, "agent": agent})
        return fake

    monkeypatch.setattr("matsql.backends.registry.make_backend", fake_make_backend)
    team = tmp_path / "teacher.yaml"
    team.write_text(
        "teacher: {backend: vllm, model: qwen2.5-coder-1.5b-instruct, gpu_memory_utilization: 0.5}\n"
    )
    res = _sft_data(rollout, tmp_path / "out", "--teacher", str(team))
    assert res.exit_code == 0, res.output
    assert got == [
        {
            "backend": "vllm",
            "model": "qwen2.5-coder-1.5b-instruct",
            "gpu_memory_utilization": 0.5,
            "agent": "teacher",
        }
    ]
    rows = [json.loads(x) for x in (tmp_path / "out" / "val-sel.jsonl").read_text().splitlines()]
    assert {r["teacher"] for r in rows} == {"vllm:qwen2.5-coder-1.5b-instruct"} and len(rows) == 4
    assert "4 critiques: 4 accepted first try, 0 resamples" in res.output


def test_cli_without_teacher_writes_what_the_rule_based_default_always_wrote(tmp_path):
    pytest.importorskip("datasets")
    rollout = _rollout(tmp_path)
    res = _sft_data(rollout, tmp_path / "out")
    assert res.exit_code == 0, res.output
    meta = json.loads((tmp_path / "out" / "sft_data.json").read_text())
    assert (
        set(meta) == {"benchmark", "rollouts", "seed", "agents"}
        and "teacher" not in meta["agents"]["val-sel"]
    )
    rows = [json.loads(x) for x in (tmp_path / "out" / "val-sel.jsonl").read_text().splitlines()]
    assert not any(c in rows[0] for c in sd.TEACHER_COLUMNS)


def test_cli_refuses_a_teacher_for_agents_it_does_not_write(tmp_path):
    team = tmp_path / "t.yaml"
    team.write_text("teacher: {model: m}\n")
    res = CliRunner().invoke(
        train_app,
        [
            "sft-data",
            "--agent",
            "planner",
            "--benchmark",
            "minibench-train",
            "--out",
            str(tmp_path),
            "--teacher",
            str(team),
        ],
    )
    assert res.exit_code == 2 and "validator critiques" in res.output


def test_the_shipped_teacher_team_file_is_a_team_and_names_a_served_teacher():
    from matsql.team import load_team

    f = ROOT / "experiments" / "agents" / "teacher-http.yaml"
    assert set(load_team(f).agents) == {"planner", "val-sel", "val-cond", "fixer", "selector"}
    t = tch.load_teacher(f)
    assert t.model_id == "openai:http://localhost:8010/qwen2.5-72b-instruct" and t.backend["timeout_s"] == 300


def test_teacher_on_the_local_cpu_backend_falls_back_when_the_model_never_concludes(tiny_chat_model_dir):
    """The in-process transformers backend as teacher (through make_backend, as the CLI does): a
    random tiny model writes no verdict, so each critique is resampled once, then replaced."""
    pytest.importorskip("torch")
    cfg = {"backend": "local", "model": str(tiny_chat_model_dir), "device": "cpu"}
    spec = tch.LLMTeacher(backend=cfg, model_id="local:tiny", max_tokens=6, resamples=1)
    built = sd.validator_examples(
        [record()], schema, "val-cond", max_per_question=None, llm=(make_backend(cfg, agent="teacher"), spec)
    )
    assert built.teacher is not None
    assert built.teacher.as_dict() == {
        "critiques": 3,
        "first_try": 0,
        "resamples": 3,
        "recovered": 0,
        "fallbacks": 3,
        "rejected": {"no_verdict": 6},
    }
    plain = sd.validator_examples([record()], schema, "val-cond", max_per_question=None)
    assert [r["completion"] for r in built.rows] == [r["completion"] for r in plain.rows]
    assert {r["teacher"] for r in built.rows} == {tch.RULE_TEACHER}
