"""Issue 17: faults that used to stop a rollout for good, and bad files, each named in one line."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from matsql.backends.openai_http import OpenAIBackend
from matsql.backends.server import FaultConfig, OpenAIServer
from matsql.evaluate.metrics import score_records, summarize
from matsql.rollout.config import RolloutConfig
from matsql.rollout.io import RolloutFileError, RolloutWriter, read_records
from matsql.rollout.runner import run_rollout
from tests.rollout_fakes import CannedBackend, make_db, questions, sqlite_services

runner = CliRunner()


class SurrogateCanned(CannedBackend):
    """Canned outputs; the planner's answers to question 7 carry a lone surrogate and a NUL."""

    def generate(self, prompts, n=1, temperature=0.0, max_tokens=256, stop=None, seed=0):
        out = super().generate(prompts, n, temperature, max_tokens, stop, seed)
        return [
            [t + " \ud800\x00" if "question 7" in p.messages[-1][1] else t for t in texts]
            for p, texts in zip(prompts, out, strict=True)
        ]


@pytest.fixture()
def faulty_server():
    """HTTP 400 for question 3's prompts, question 5's answers dripped past any deadline."""
    server = OpenAIServer(
        SurrogateCanned(),
        model_name="canned",
        faults=FaultConfig(reject_marker="question 3", drip_marker="question 5", drip_s=0.2),
    )
    with server.running():
        yield server


def test_rollout_goes_on_past_a_rejected_prompt_a_surrogate_and_a_dripping_server(tmp_path, faulty_server):
    db = make_db(tmp_path / "music.sqlite")
    http = OpenAIBackend(
        faulty_server.url + "/v1", "canned", timeout_s=0.5, max_retries=1, backoff_s=0.01, max_backoff_s=0.02
    )
    svc = sqlite_services(db, CannedBackend())
    svc.backends = dict.fromkeys(svc.backends, http)
    cfg = RolloutConfig(benchmark="fake", k=3, batch_questions=5)
    out = tmp_path / "r.jsonl"
    try:
        stats = run_rollout(questions(), cfg, svc, out, cfg.model_dump(mode="json"), show_progress=False)
    finally:
        http.close()
    recs = read_records(out)  # raises on a duplicate
    assert [r.question_id for r in recs] == [f"q{i}" for i in range(10)]  # none lost, none twice
    errors = {r.question_id: r.error for r in recs if r.error}
    assert set(errors) == {"q3", "q5"}
    assert "planner" in errors["q3"] and "HTTP 400" in errors["q3"]
    assert "planner" in errors["q5"] and "deadline" in errors["q5"]
    assert stats["error_records"] == 2
    q7 = recs[7]
    assert (
        q7.error is None
        and q7.candidates
        and all(c.planner.text.endswith(" \ufffd\ufffd") for c in q7.candidates)
    )
    assert "\ud800" not in out.read_text(encoding="utf-8")  # the file is valid UTF-8 throughout
    for r in recs:
        if r.question_id not in errors and r.question.db_id == "music":
            assert len(r.candidates) == 3 and all(c.branches for c in r.candidates)
    summary = summarize(score_records(recs))
    assert summary.n_error == 2 and summary.n_total == 10
    # resuming finds nothing to redo: error records are final
    again = run_rollout(questions(), cfg, svc, out, cfg.model_dump(mode="json"), show_progress=False)
    assert again["written"] == 0


def _header_and_records(tmp_path: Path, k: int) -> Path:
    db = make_db(tmp_path / "music.sqlite")
    cfg = RolloutConfig(benchmark="fake", k=k, batch_questions=5)
    out = tmp_path / "r.jsonl"
    run_rollout(
        questions(4),
        cfg,
        sqlite_services(db, CannedBackend()),
        out,
        cfg.model_dump(mode="json"),
        show_progress=False,
    )
    return out


def test_a_torn_header_alone_restarts_with_a_fresh_header(tmp_path):
    out = tmp_path / "r.jsonl"
    out.write_text('{"kind": "header", "matsql_vers')  # killed while writing the header
    with RolloutWriter(out, {"k": 2}, "hash-k2") as w:
        assert w.done == set()
    first = json.loads(out.read_text().splitlines()[0])
    assert first["kind"] == "header" and first["config_hash"] == "hash-k2"


def test_a_file_without_its_header_is_refused(tmp_path):
    """The issue's case: records but a lost header used to disable the config check (a --k 2
    resume appended to a K=4 file)."""
    out = _header_and_records(tmp_path, k=4)
    lines = out.read_text().splitlines()
    out.write_text("\n".join(lines[1:]) + "\n")  # header gone
    cfg = RolloutConfig(benchmark="fake", k=2, batch_questions=5)
    with pytest.raises(RolloutFileError, match=r"r\.jsonl: the first line is not a rollout header"):
        RolloutWriter(out, cfg.model_dump(mode="json"), cfg.digest())
    assert out.read_text().splitlines() == lines[1:]  # nothing written


def test_a_different_config_is_refused_naming_what_differs(tmp_path):
    out = _header_and_records(tmp_path, k=4)
    cfg = RolloutConfig(benchmark="fake", k=2, batch_questions=5)
    with pytest.raises(RolloutFileError, match=r"k: 4 -> 2"):
        RolloutWriter(out, cfg.model_dump(mode="json"), cfg.digest())


def test_gz_output_is_gzip_and_a_torn_member_is_repaired(tmp_path):
    db = make_db(tmp_path / "music.sqlite")
    cfg = RolloutConfig(benchmark="fake", k=2, batch_questions=3)
    out = tmp_path / "r.jsonl.gz"
    run_rollout(
        questions(6),
        cfg,
        sqlite_services(db, CannedBackend()),
        out,
        cfg.model_dump(mode="json"),
        show_progress=False,
    )
    assert out.read_bytes()[:2] == b"\x1f\x8b"
    full = gzip.decompress(out.read_bytes()).decode().splitlines()
    assert len(full) == 7 and json.loads(full[0])["kind"] == "header"
    # a kill: the last record lost, and half of a gzip member left behind
    members = out.read_bytes()
    last = gzip.compress((full[-1] + "\n").encode(), mtime=0)
    assert members.endswith(last)
    out.write_bytes(members[: -len(last)] + last[: len(last) // 2])
    stats = run_rollout(
        questions(6),
        cfg,
        sqlite_services(db, CannedBackend()),
        out,
        cfg.model_dump(mode="json"),
        show_progress=False,
    )
    assert stats["written"] == 1
    assert gzip.decompress(out.read_bytes()).decode().splitlines() == full


# ------------------------------------------------------------------ bad files: one line, file and line


def _latin1_rollout(tmp_path: Path) -> Path:
    out = _header_and_records(tmp_path, k=2)
    lines = out.read_bytes().splitlines(keepends=True)
    lines[2] = lines[2].replace(b"question 1", "questi\u00f3n 1".encode("latin-1"))
    out.write_bytes(b"".join(lines))
    return out


def _one_line_error(res, path: Path, lineno: int, byte: str = "0xf3") -> None:
    assert res.exit_code in (1, 2), res.output  # each command's own code for bad input
    text = " ".join(res.output.split())
    assert f"{path.name}:{lineno}: not UTF-8 text (byte {byte}" in text, text
    assert "Traceback" not in res.output


@pytest.mark.parametrize(
    "argv",
    [
        ["metrics", "{f}"],
        ["compare", "{f}", "{f}", "--metric", "pass@k"],
        [
            "labels",
            "build",
            "--agent",
            "val-sel",
            "--mode",
            "independent",
            "--rollouts",
            "{f}",
            "--out",
            "{o}",
        ],
    ],
    ids=["metrics", "compare", "labels-build"],
)
def test_readers_name_file_and_line_of_a_decoding_error(tmp_path, argv):
    from matsql.cli import app

    f = _latin1_rollout(tmp_path)
    args = [a.format(f=f, o=tmp_path / "pairs") for a in argv]
    _one_line_error(runner.invoke(app, args), f, 3)


def test_rollout_resume_names_file_and_line_of_a_decoding_error(tmp_path, minibench):
    from matsql.cli import app

    out = tmp_path / "r.jsonl"
    args = [
        "rollout",
        "-b",
        "minibench",
        "--data",
        str(minibench),
        "-a",
        str(_echo_agents(tmp_path)),
        "-o",
        str(out),
        "--limit",
        "2",
        "--k",
        "1",
    ]
    assert runner.invoke(app, args).exit_code == 0
    data = out.read_bytes().splitlines(keepends=True)
    data[1] = data[1].replace(b'"question_id"', b'"question_id"  \xff', 1)
    out.write_bytes(b"".join(data))
    _one_line_error(runner.invoke(app, args), out, 2, byte="0xff")


def test_gz_named_output_that_is_not_gzip_is_named(tmp_path):
    from matsql.cli import app

    f = tmp_path / "plain.jsonl.gz"
    f.write_text('{"kind": "header"}\n')
    res = runner.invoke(app, ["metrics", str(f)])
    assert (
        res.exit_code == 2
        and "plain.jsonl.gz" in res.output
        and "not a valid gzip file" in " ".join(res.output.split())
    )


# ------------------------------------------------------------------ a corrupt database


@pytest.fixture(scope="module")
def minibench(tmp_path_factory) -> Path:
    from matsql.benchmarks.commands import data_app

    out = tmp_path_factory.mktemp("mb") / "minibench"
    assert runner.invoke(data_app, ["minibench", str(out)]).exit_code == 0
    return out


def _echo_agents(tmp_path: Path) -> Path:
    p = tmp_path / "agents.yaml"
    p.write_text("defaults: {backend: echo}\nagents: {planner: {}, val-sel: {}, val-cond: {}, fixer: {}}\n")
    return p


def test_a_corrupt_database_is_named_once_and_its_questions_counted(tmp_path, minibench):
    import shutil

    from matsql.cli import app

    data = tmp_path / "mb"
    shutil.copytree(minibench, data)
    dev = json.loads((data / "dev.json").read_text())
    victim = dev[0]["db_id"]
    db_file = next((data / "dev_databases" / victim).glob("*.sqlite"))
    db_file.write_bytes(b"this is not a database" * 200)
    n_victim = sum(q["db_id"] == victim for q in dev[:12])
    out = tmp_path / "r.jsonl"
    res = runner.invoke(
        app,
        [
            "rollout",
            "-b",
            "minibench",
            "--data",
            str(data),
            "-a",
            str(_echo_agents(tmp_path)),
            "-o",
            str(out),
            "--limit",
            "12",
            "--k",
            "1",
        ],
    )
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert text.count(db_file.name) == 1, text  # once, by path
    assert f"{n_victim} question(s)" in text
    recs = read_records(out)
    assert len(recs) == 12
    bad = [r for r in recs if r.error]
    assert len(bad) == n_victim and all(db_file.name in r.error for r in bad)
    res = runner.invoke(app, ["metrics", str(out)])
    assert f"{n_victim} error record(s)" in " ".join(res.output.split())


def test_missing_databases_are_counted_over_the_whole_benchmark(tmp_path, minibench):
    """The count is the benchmark's, not the run's (a 1,000-question part of spider-train said
    "96 question(s) need a missing database": 96 of its 7,000), so the line says which."""
    import shutil

    from matsql.cli import app

    data = tmp_path / "mb"
    shutil.copytree(minibench, data)
    dev = json.loads((data / "dev.json").read_text())
    victim = dev[-1]["db_id"]
    shutil.rmtree(data / "dev_databases" / victim)
    n_victim = sum(q["db_id"] == victim for q in dev)
    args = ["rollout", "-b", "minibench", "--data", str(data), "-a", str(_echo_agents(tmp_path))]
    res = runner.invoke(app, [*args, "-o", str(tmp_path / "r.jsonl"), "--limit", "1", "--k", "1"])
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert f"{n_victim} of minibench's {len(dev)} question(s) need a missing database" in text, text
    assert "before any --part/--limit" in text


def test_an_undecodable_agents_file_is_named_with_its_line(tmp_path, minibench):
    from matsql.cli import app

    agents = tmp_path / "agents.yaml"
    agents.write_bytes(b"defaults: {backend: echo}\n# caf\xe9\nagents: {planner: {}}\n")
    res = runner.invoke(
        app,
        [
            "rollout",
            "-b",
            "minibench",
            "--data",
            str(minibench),
            "-a",
            str(agents),
            "-o",
            str(tmp_path / "r.jsonl"),
        ],
    )
    assert res.exit_code == 2
    assert "agents.yaml:2: not UTF-8 text (byte 0xe9" in " ".join(res.output.split())
