"""Stage manifests: what ran, from which inputs, with what result. A stage whose manifest says
``done`` with the same config hash is skipped on re-run.

The hash covers the stage's command line, its input stages' hashes, the *contents* of every file
the command names that no stage writes (recipes, agents files, plans, prediction files; an
option's value ``--x=PATH`` and an override's ``key=PATH`` count too; a training recipe counts
as resolved with its bases), and the code that runs it: matsql's version and a digest of its
packaged templates. The manifest keeps each part, so ``matsql experiment status`` can say why a
stage is stale.

Paths count relative to the plan's folders: inside the command line and as the names of the files
it names, the run folder is written ``<run_dir>`` and the plan's base folder (the checkout)
``<base_dir>`` (:func:`portable_text`); a file still counts by its content. So a run folder carried
between machines whose checkouts sit at different absolute paths (this one and the lent GPU's
``/root/matsql/repo``) keeps its finished stages fresh, and CPU stages can run on either.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from matsql.experiment.plan import Stage
from matsql.fileio import write_text_atomic


def manifest_path(run_dir: Path, stage: str) -> Path:
    return run_dir / "manifests" / f"{stage}.json"


def read_manifest(run_dir: Path, stage: str) -> dict[str, Any] | None:
    p = manifest_path(run_dir, stage)
    if not p.exists():
        return None
    return json.loads(p.read_text())


_FILE_CACHE: dict[tuple[str, int, int], str] = {}


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes (cached per path, size and mtime within a process)."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _FILE_CACHE:
        h = hashlib.sha256()
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _FILE_CACHE[key] = h.hexdigest()
    return _FILE_CACHE[key]


def _inside(path: Path, roots: list[Path]) -> bool:
    return any(path == r or r in path.parents for r in roots)


def named_files(stage: Stage, stage_outs: list[str]) -> dict[str, str]:
    """path -> sha256 of each existing file the command names, outside every stage's output
    (those are covered by the input stages' hashes). A training recipe counts by its resolved
    content (:func:`recipe_sha256`), so the bases it extends count too."""
    roots = [Path(o).resolve() for o in stage_outs]
    recipe = _train_recipe(stage.argv)
    found: dict[str, str] = {}
    for tok in stage.argv:
        cands = [tok]
        if "=" in tok:  # --opt=PATH, key=PATH (recipe overrides), AGENT=PATH (adapters)
            cands.append(tok.split("=", 1)[1])
        for c in cands:
            if not c or len(c) > 4096:
                continue
            p = Path(c)
            try:
                if not p.is_file() or _inside(p.resolve(), roots):
                    continue
                found[c] = recipe_sha256(p) if c == recipe else file_sha256(p)
            except OSError:
                continue
    return found


def is_training(argv: list[str]) -> bool:
    """Whether a stage's argv is a training run, ``train sft|orpo ...``."""
    return argv[:1] == ["train"] and argv[1:2] in (["sft"], ["orpo"])


def _train_recipe(argv: list[str]) -> str | None:
    """The recipe argument of ``train sft|orpo RECIPE ...``."""
    return argv[2] if len(argv) > 2 and is_training(argv) else None


def recipe_sha256(path: Path) -> str:
    """``recipe:<digest>`` of the recipe as resolved (bases merged, defaults filled): editing a
    comment or moving a key between a recipe and its base does not make a stage stale, a changed
    setting in any base does. A file that is no valid recipe counts by its bytes (the stage
    itself will report it)."""
    from matsql.train.config import RecipeError, recipe_digest

    try:
        return "recipe:" + recipe_digest(path)
    except RecipeError:
        return file_sha256(path)


def code_identity() -> dict[str, str]:
    """matsql's version and a digest of its packaged templates and data formats (``*.yaml``
    under the package): a prompt template edit changes every stage that uses the package."""
    from importlib import resources

    import matsql

    h = hashlib.sha256()
    root = Path(str(resources.files("matsql")))
    for f in sorted(root.rglob("*.yaml")):
        if "plans" in f.relative_to(root).parts:  # plans are read by the runner, not by stages
            continue
        h.update(str(f.relative_to(root)).encode() + b"\0" + f.read_bytes() + b"\0")
    return {"version": matsql.__version__, "templates": h.hexdigest()[:16]}


Roots = Sequence[tuple[str, Path]]
"""(name, folder) pairs whose absolute paths a stage hash writes as ``<name>``."""


def plan_roots(run_dir: Path, base_dir: Path) -> list[tuple[str, Path]]:
    """The folders a plan's stage hashes are relative to: its run folder and its base folder."""
    return [("run_dir", Path(run_dir)), ("base_dir", Path(base_dir))]


def portable_text(text: str, roots: Roots) -> str:
    """``text`` with each root's absolute path (as given, and resolved) written ``<name>``,
    the longest first (a run folder inside the base folder is ``<run_dir>``). Only whole path
    components match: ``/w/main`` is not replaced inside ``/w/main2`` or ``/x/w/main``."""
    forms: list[tuple[str, str]] = []
    for name, root in roots:
        for form in dict.fromkeys((str(root), str(root.resolve()))):
            if form not in ("", "/", "."):
                forms.append((form.rstrip("/"), name))
    for form, name in sorted(forms, key=lambda f: -len(f[0])):
        text = re.sub(rf"(?<![\w./-]){re.escape(form)}(?![\w.-])", f"<{name}>", text)
    return text


def hash_parts(
    stage: Stage,
    input_hashes: dict[str, str],
    stage_outs: list[str],
    code: dict[str, str] | None = None,
    roots: Roots = (),
) -> dict[str, Any]:
    """What a stage's hash covers, part by part (kept in its manifest); with ``roots`` (the
    plan's folders, :func:`plan_roots`) paths under them are written relative to them."""
    files = named_files(stage, stage_outs)
    return {
        "argv": [portable_text(a, roots) for a in stage.argv],
        "inputs": input_hashes,
        "files": {portable_text(f, roots): h for f, h in files.items()},
        "code": code if code is not None else code_identity(),
    }


def stage_hash(
    stage: Stage,
    input_hashes: dict[str, str],
    stage_outs: list[str] | None = None,
    code: dict[str, str] | None = None,
    parts: dict[str, Any] | None = None,
) -> str:
    parts = parts or hash_parts(stage, input_hashes, stage_outs or [stage.out], code)
    blob = json.dumps(parts, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def stale_reasons(manifest: dict[str, Any], parts: dict[str, Any]) -> list[str]:
    """Why a done stage's manifest no longer matches what the plan would run now."""
    old = manifest.get("parts")
    if not isinstance(old, dict):
        return ["its manifest predates per-file hashes (written by an older matsql)"]
    why: list[str] = []
    if old.get("argv") != parts["argv"]:
        relative = any("<base_dir>" in a or "<run_dir>" in a for a in parts["argv"])
        if relative and not any("<base_dir>" in a or "<run_dir>" in a for a in old.get("argv", [])):
            why.append(
                "its manifest predates paths relative to the plan's folders (written by an older matsql)"
            )
        else:
            why.append("the command changed")
    for d, h in parts["inputs"].items():
        if old.get("inputs", {}).get(d) != h:
            why.append(f"input stage {d} changed")
    old_files, new_files = old.get("files", {}), parts["files"]
    for f in sorted(set(old_files) | set(new_files)):
        if f not in new_files:
            why.append(f"{f} is gone")
        elif f not in old_files:
            why.append(f"now names {f}")
        elif old_files[f] != new_files[f]:
            why.append(f"{f} changed")
    oc, nc = old.get("code", {}), parts["code"]
    if oc.get("version") != nc.get("version"):
        why.append(f"matsql {oc.get('version')} -> {nc.get('version')}")
    elif oc.get("templates") != nc.get("templates"):
        why.append("matsql's packaged templates changed")
    return why or ["the stage hash changed"]


def git_commit(cwd: Path | None = None) -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=cwd, timeout=10
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def collect_metrics(out: Path) -> dict[str, Any]:
    """Metrics a stage left beside its output (``metrics.json`` / ``run.json`` / ``*.metrics.json``)."""
    cands = []
    if out.is_dir():
        cands = [out / "metrics.json", out / "run.json", out / "yield.json", out / "compare.json"]
    else:
        cands = [out.with_suffix(".metrics.json"), out.parent / (out.name + ".metrics.json")]
    found: dict[str, Any] = {}
    for c in cands:
        if c.exists():
            try:
                found[c.name] = json.loads(c.read_text())
            except json.JSONDecodeError:
                continue
    return found


def write_manifest(run_dir: Path, stage: Stage, data: dict[str, Any]) -> None:
    p = manifest_path(run_dir, stage.name)
    p.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(p, json.dumps(data, indent=2, default=str))


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
