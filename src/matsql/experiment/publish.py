"""Publish a study: model cards, preference datasets and the results README, as the Hub expects.

``matsql publish RUN --repo ORG/NAME [--dry-run]`` assembles one folder (``RUN/publish`` unless
``--out``) that is exactly what would be pushed:

    README.md                          results: the report table, the compares, the figure
    models/<agent>-<iter>[-<arm>]/     one trained agent each: README.md (a huggingface_hub
                                       ModelCard) + its LoRA adapter files when the run has them
    datasets/README.md                 a DatasetCard, one config per preference-pair set
    datasets/<labels stage>[-<mode>]/pairs.jsonl.gz

``RUN`` is a run folder (``manifests/``, as ``matsql experiment run`` writes it) or a collected
results folder (``collect.json``, as ``matsql experiment collect`` writes it; adapters from its
``adapters/`` folder when collected with ``--adapters``). Cards carry ``base_model`` as a hub id
(never a local alias), the base model's licence, the quantization the weights were loaded from,
and the team results as ``EvalResult`` entries. ``push`` uploads the folder to the model repo
ORG/NAME and ``datasets/`` to the dataset repo ORG/NAME-preference-pairs.
"""

from __future__ import annotations

import gzip
import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from matsql import __version__
from matsql.evaluate.portable import portable_path, portable_text

ARTIFACT_MARKERS = ("adapter_config.json", "config.json")
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin", "run.json")
# Licences of the base models matsql knows (their hub model cards): a card takes its base's.
BASE_LICENSES = {
    "Qwen/Qwen2.5-Coder-0.5B-Instruct": "apache-2.0",
    "HuggingFaceTB/SmolLM2-135M-Instruct": "apache-2.0",
    "meta-llama/Llama-3.2-1B-Instruct": "llama3.2",
    "meta-llama/Llama-3.2-3B-Instruct": "llama3.2",
}
BENCHMARK_DATASETS = {  # benchmark name -> (dataset type on the Hub, display name, split)
    "spider-dev": ("xlangai/spider", "Spider", "validation"),
    "spider-train": ("xlangai/spider", "Spider", "train"),
    "bird-minidev": ("birdsql/bird_mini_dev", "BIRD mini-dev", "validation"),
    "bird-dev": ("birdsql/bird-dev", "BIRD", "validation"),
    "minibench": ("matsql-minibench", "matsql minibench", "dev"),
    "minibench-train": ("matsql-minibench", "matsql minibench", "train"),
}
REPORTS = ("report-all/report.md", "report/report.md", "report.md")  # the first found: widest table
COMPARES = ("compare/compare.md", "compare-joint/compare.md", "compare-sft/compare.md", "compare.md")
_ARM_STAGE = re.compile(r"^orpo-(?P<iter>iter\d+)-(?P<agent>val-sel|val-cond)-(?P<arm>[a-z0-9]+)$")


@dataclass
class Artifact:
    """One trained agent of a run."""

    stage: str
    agent: str
    iteration: str  # sft, iter1, iter2, e1
    arm: str | None
    path: Path | None  # folder holding the adapter, None when the run does not ship weights
    command: str = ""
    commit: str | None = None
    run: dict[str, Any] = field(default_factory=dict)  # run.json of the training run
    training: dict[str, Any] = field(default_factory=dict)  # collect.json's summary

    @property
    def folder(self) -> str:
        return "-".join(p for p in (self.agent, self.iteration, self.arm) if p)


def parse_stage(stage: str) -> tuple[str, str, str | None]:
    """(agent, iteration, arm) of a training stage of the iter2 plans."""
    m = _ARM_STAGE.match(stage)
    if m:
        return m["agent"], m["iter"], m["arm"]
    if stage.startswith("sft-"):
        return stage[4:], "sft", None
    if stage == "fixer-e1":
        return "fixer", "e1", None
    return stage, "", None


def _is_model_dir(p: Path) -> bool:
    return p.is_dir() and any((p / m).exists() for m in ARTIFACT_MARKERS)


def find_artifacts(run_dir: Path) -> list[Artifact]:
    """Trained agents of a run folder (manifests) or of a collected results folder."""
    run_dir = Path(run_dir)
    found: list[Artifact] = []
    if (run_dir / "manifests").is_dir():
        for m in sorted((run_dir / "manifests").glob("*.json")):
            man = json.loads(m.read_text())
            out = Path(man.get("out", ""))
            if man.get("status") != "done" or not _is_model_dir(out):
                continue
            run_info = json.loads((out / "run.json").read_text()) if (out / "run.json").exists() else {}
            agent, it, arm = parse_stage(man["stage"])
            found.append(
                Artifact(
                    man["stage"], agent, it, arm, out, man.get("command", ""), man.get("commit"), run_info
                )
            )
        return found
    collected = _collected(run_dir)
    for stage, summary in collected.get("training", {}).items():
        adapter = run_dir / "adapters" / stage
        path = adapter if _is_model_dir(adapter) else None
        run_info = json.loads((adapter / "run.json").read_text()) if (adapter / "run.json").exists() else {}
        agent, it, arm = parse_stage(stage)
        found.append(Artifact(stage, agent, it, arm, path, "", None, run_info, summary or {}))
    return found


def _collected(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "collect.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _plan_of(run_dir: Path) -> Any | None:
    """The plan a run came from: RUN/plan.yaml, else experiments/<collect.json plan>.yaml or the
    packaged plans/<name>.yaml of this checkout."""
    from importlib import resources

    from matsql.evaluate.portable import repo_root
    from matsql.experiment.plan import load_plan

    root = repo_root() or Path.cwd()
    name = _collected(run_dir).get("plan")
    candidates = [run_dir / "plan.yaml"]
    if name:
        candidates += [
            root / "experiments" / f"{name}.yaml",
            Path(str(resources.files("matsql.experiment").joinpath("plans", f"{name}.yaml"))),
        ]
    for c in candidates:
        if c.is_file():
            try:
                return load_plan(c, base_dir=root)
            except Exception:  # a plan that no longer loads only costs the commands and the model
                return None
    return None


def _stage_commands(run_dir: Path, plan: Any | None) -> dict[str, str]:
    if plan is None:
        return {}
    return {n: s.command for n, s in plan.stages.items()}


def hub_base_model(spec: str | None) -> tuple[str | None, str | None]:
    """(hub id, quantization of the local file it was loaded from) of a base model spec: a hub id
    is kept, a local alias is mapped through matsql's model registry."""
    if not spec:
        return None, None
    from matsql.models import lookup

    entry = lookup(spec)
    if entry is None:
        return (spec if "/" in spec and not Path(spec).exists() else None), None
    hub = entry.hub_ids[0] if entry.hub_ids else None
    quant = entry.gguf.quantization if entry.gguf else None
    return hub, quant


def _agent_model(plan: Any | None, agent: str) -> str | None:
    """The model an agent of the plan's team file uses (``vars.agents``)."""
    import yaml

    if plan is None or "agents" not in plan.vars:
        return None
    path = Path(str(plan.vars["agents"]))  # resolved by the plan (base_dir: the checkout)
    if not path.is_file():
        return None
    team = yaml.safe_load(path.read_text()) or {}
    entry = (team.get("agents") or {}).get(agent) or {}
    return entry.get("model") or (team.get("defaults") or {}).get("model")


def _report_rows(run_dir: Path) -> tuple[list[dict[str, Any]], Path | None]:
    for name in REPORTS:
        js = (run_dir / name).with_suffix(".json")
        if js.exists():
            return json.loads(js.read_text()), js.parent
    return [], None


def teams_of(art: Artifact, configs: list[str]) -> list[str]:
    """The report rows (teams) an agent was part of."""
    trained = [c for c in configs if c.lower() not in ("untrained", "base")]
    if art.arm:
        arm = art.arm.upper()
        exact = [c for c in trained if c == arm]
        tagged = [c for c in trained if c == f"{arm}-{art.iteration}"]
        return tagged or exact
    if art.agent in ("planner", "selector"):
        return trained  # shared by every trained team
    if art.iteration == "e1":
        return [c for c in trained if c != "SFT" and "-iter" not in c]
    if art.agent == "fixer":
        return [c for c in trained if c == "SFT" or c.endswith("-iter1")] or [
            c for c in trained if c != "SFT"
        ]
    return [c for c in trained if c == "SFT"]


def eval_results(art: Artifact, rows: list[dict[str, Any]], benchmark: str | None) -> list[Any]:
    from huggingface_hub import EvalResult

    ds_type, ds_name, split = BENCHMARK_DATASETS.get(
        benchmark or "", (benchmark or "unknown", benchmark or "unknown", None)
    )
    by_name = {r["config"]: r for r in rows}
    out = []
    for team in teams_of(art, list(by_name)):
        r = by_name[team]
        k = r.get("k") or "K"
        for metric, value in (
            ("selector EX", r.get("selector_ex")),
            (f"pass@{k}", r["metrics"].get("pass@K")),
        ):
            if value is None:
                continue
            out.append(
                EvalResult(
                    task_type="text2text-generation",
                    task_name="Text-to-SQL",
                    dataset_type=ds_type,
                    dataset_name=ds_name,
                    dataset_split=split,
                    metric_type="execution_accuracy",
                    metric_name=f"{metric} of team {team} (n={r['n_scored']})",
                    metric_value=round(100 * value, 2),
                )
            )
    return out


def model_card(art: Artifact, repo: str, rows: list[dict[str, Any]], plan: Any | None, run_dir: Path) -> Any:
    """A huggingface_hub ModelCard for one trained agent."""
    from huggingface_hub import ModelCard, ModelCardData

    spec = art.run.get("base_model") or _agent_model(plan, art.agent)
    hub, quant = hub_base_model(spec)
    if hub is None:
        raise ValueError(f"{art.stage}: no hub id for base model {spec!r} (add it to matsql's models.yaml)")
    licence = BASE_LICENSES.get(hub, "other")
    benchmark = plan.vars.get("eval") if plan is not None else None
    data = ModelCardData(
        base_model=hub,
        license=licence,
        library_name="peft",
        pipeline_tag="text-generation",
        tags=["text-to-sql", "matsql", "lora", art.agent, art.iteration] + ([art.arm] if art.arm else []),
        model_name=f"{repo}/models/{art.folder}",
        eval_results=eval_results(art, rows, benchmark) or None,
    )
    weights = f"a LoRA adapter on `{hub}`; training and evaluation loaded the base weights from the " + (
        f"dequantized {quant} GGUF file of matsql's model registry (not the bf16 hub checkpoint)"
        if quant
        else "hub checkpoint"
    )
    command = art.command or _stage_commands(run_dir, plan).get(art.stage, "")
    lines = [
        f"# {art.folder}",
        "",
        f"The `{art.agent}` agent of a matsql team ({art.iteration}"
        + (f", arm {art.arm.upper()}" if art.arm else "")
        + f"), stage `{art.stage}`, trained by matsql {__version__}.",
        "",
        f"- Weights: {weights}.",
        f"- Licence: {licence}, the base model's.",
        f"- Command: `{_with_matsql(portable_text(command))}`"
        if command
        else "- Command: see the study plan",
    ]
    if art.commit:
        lines.append(f"- Commit: `{art.commit}`")
    if art.path is None:
        lines.append("- This folder holds the card only: the run's results do not ship this adapter.")
    if data.eval_results:
        lines += ["", "## Results of the teams it was part of", ""]
        lines += [f"- {e.metric_name}: {e.metric_value}" for e in data.eval_results]
    metrics = art.run.get("metrics") or art.training
    if metrics:
        lines += [
            "",
            "## Training metrics",
            "",
            "```json",
            json.dumps(metrics, indent=2, default=str)[:4000],
            "```",
        ]
    if art.run.get("data"):
        lines += [
            "",
            "## Training data (sha256)",
            "",
            "```json",
            json.dumps(art.run["data"], indent=2),
            "```",
        ]
    return ModelCard.from_template(
        data, template_str="---\n{{ card_data }}\n---\n\n{{ body }}\n", body="\n".join(lines)
    )


def _with_matsql(command: str) -> str:
    return command if command.startswith("matsql ") else f"matsql {command}"


def pair_sets(run_dir: Path) -> list[tuple[str, Path]]:
    """(config name, pairs.jsonl[.gz]) of every preference-pair set: labels stages' outputs, one
    per mode folder where a stage labelled several."""
    found = []
    for p in sorted(run_dir.glob("labels-*/**/pairs.jsonl*")):
        if p.name not in ("pairs.jsonl", "pairs.jsonl.gz"):
            continue
        rel = p.parent.relative_to(run_dir)
        found.append(("-".join(rel.parts), p))
    return found


def dataset_card(repo: str, sets: list[tuple[str, Path]], plan: Any | None) -> Any:
    from huggingface_hub import DatasetCard, DatasetCardData

    train = plan.vars.get("train") if plan is not None else None
    data = DatasetCardData(
        license="other",
        language=["en"],
        pretty_name=f"{repo} preference pairs",
        task_categories=["text-generation"],
        tags=["text-to-sql", "matsql", "preference", "orpo"],
        configs=[{"config_name": name, "data_files": f"{name}/pairs.jsonl.gz"} for name, _ in sets],
    )
    body = [
        f"# {repo} preference pairs",
        "",
        "Chosen/rejected agent outputs mined from matsql rollouts (DESIGN.md label modes:"
        " independent, collab, collab_v2, joint; fixer E1), one config per labels stage and mode."
        " Each row holds the shared prompt (chat messages), `chosen`, `rejected`, the question and"
        " database ids, and the label mode.",
        "",
        f"Questions come from `{train}`; the prompts quote its schemas and questions, so the"
        " benchmark's own licence applies to them."
        if train
        else "",
        "",
        "| config | rows |",
        "|---|---|",
    ]
    for name, path in sets:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt", encoding="utf-8") as f:
            n = sum(1 for line in f if line.strip())
        body.append(f"| {name} | {n} |")
    return DatasetCard.from_template(
        data, template_str="---\n{{ card_data }}\n---\n\n{{ body }}\n", body="\n".join(body)
    )


def readme_sections(run_dir: Path) -> list[Path]:
    """The results a run's README shows: one report table (the plan's ``report-all`` with every
    row when it ran, else the two-arm ``report``), then each compare."""
    table = next((run_dir / n for n in REPORTS if (run_dir / n).exists()), None)
    return ([table] if table else []) + [run_dir / n for n in COMPARES if (run_dir / n).exists()]


def build_folder(run_dir: Path, repo: str, out: Path, include_weights: bool = True) -> list[Path]:
    """Write the folder that ``push`` uploads; return the cards and READMEs written."""
    run_dir = Path(run_dir)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    written: list[Path] = []
    plan = _plan_of(run_dir)
    arts = find_artifacts(run_dir)
    rows, report_dir = _report_rows(run_dir)
    readme = [f"# {repo}", "", "Agents and results of a matsql study run.", ""]
    if report_dir is not None and (report_dir / "report.png").exists():
        shutil.copy2(report_dir / "report.png", out / "report.png")
        readme += ["![selector EX, majority and pass@K per team, 95% intervals](report.png)", ""]
    for p in readme_sections(run_dir):
        readme += [portable_text(p.read_text()), ""]
    readme += ["## Agents", ""] + [
        f"- [`{a.folder}`](models/{a.folder}/README.md) (stage `{a.stage}`)" for a in arts
    ]
    sets = pair_sets(run_dir)
    if sets:
        readme += [
            "",
            f"Preference pairs: the dataset repo `{dataset_repo(repo)}` ([card](datasets/README.md)).",
        ]
    (out / "README.md").write_text("\n".join(readme) + "\n", encoding="utf-8")
    written.append(out / "README.md")
    for a in arts:
        dst = out / "models" / a.folder
        dst.mkdir(parents=True)
        if include_weights and a.path is not None:
            for name in ADAPTER_FILES:
                if (a.path / name).is_file():
                    shutil.copy2(a.path / name, dst / name)
        card = model_card(a, repo, rows, plan, run_dir)
        card.save(dst / "README.md")
        written.append(dst / "README.md")
    if sets:
        ds = out / "datasets"
        for name, path in sets:
            (ds / name).mkdir(parents=True)
            target = ds / name / "pairs.jsonl.gz"
            if path.suffix == ".gz":
                shutil.copy2(path, target)
            else:
                with path.open("rb") as src, gzip.GzipFile(target, "wb", mtime=0) as dst_f:
                    shutil.copyfileobj(src, dst_f)
        dataset_card(repo, sets, plan).save(ds / "README.md")
        written.append(ds / "README.md")
    return written


def dataset_repo(repo: str) -> str:
    return f"{repo}-preference-pairs"


def push(folder: Path, repo: str, private: bool = True) -> str:
    """Upload the models and README to ORG/NAME and the pairs to ORG/NAME-preference-pairs."""
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo, private=private, exist_ok=True)
    info = api.upload_folder(
        folder_path=str(folder),
        repo_id=repo,
        commit_message="matsql publish",
        ignore_patterns=["datasets/**"],
    )
    lines = [str(info)]
    if (folder / "datasets" / "README.md").exists():
        ds = dataset_repo(repo)
        api.create_repo(ds, repo_type="dataset", private=private, exist_ok=True)
        lines.append(
            str(
                api.upload_folder(
                    folder_path=str(folder / "datasets"),
                    repo_id=ds,
                    repo_type="dataset",
                    commit_message="matsql publish",
                )
            )
        )
    return "\n".join(lines)


__all__ = ["build_folder", "find_artifacts", "hub_base_model", "parse_stage", "portable_path", "push"]
