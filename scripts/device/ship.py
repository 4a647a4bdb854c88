"""Ship the finished stages of a run folder back from a lent GPU, a few at a time.

A lent machine goes back 30 s after its last call, or 30 minutes after it started, and takes
everything on it along. So every poll of a running plan (``study.sh wait``) ends by calling
this: each stage whose manifest says ``done`` and that has not been shipped yet is packed
(outputs without checkpoints or optimizer states, LoRA adapters cast to bf16, manifest, log)
into ``DEST/<stage>.tgz`` (split into ``.partNN`` files over 15 MiB), until the call's return
limits (8 files, 64 MiB) are reached; the rest goes with the next poll. Shipped stages are
listed in ``RUN_DIR/.shipped``. Unpack here with ``scripts/device/collect.sh``.

A run that kept its step checkpoints for a later stage to read (an ORPO run and its
``pick-checkpoint``) is held until a finished stage names its folder: without them it is of
no use at home, and left out it simply trains again on the next lease (lease 3 of the v2
study ended between an ORPO run and its pick).

    python3 scripts/device/ship.py RUN_DIR DEST [--max-files 8] [--max-mib 60]
    python3 scripts/device/ship.py RUN_DIR --cast-only     # adapters to bf16 only (study.sh pack)
    python3 scripts/device/ship.py RUN_DIR --dedupe        # identical big files -> hard links
    python3 scripts/device/ship.py RUN_DIR --spent-sft-data  # sft-data/ folders already trained on
"""

from __future__ import annotations

import argparse
import io
import json
import tarfile
from pathlib import Path

PART = 15 * 2**20
SKIP_DIRS = {"checkpoints"}
SKIP_SUFFIXES = {".pt", ".pth"}  # optimizer, scheduler and RNG states
SKIP_NAMES = {"training_args.bin"}


def bf16_adapters(root: Path) -> None:
    """Cast every saved LoRA adapter below ``root`` (checkpoints aside) to bf16, in place."""
    try:
        import torch
        from safetensors.torch import load_file, save_file
    except ImportError:  # nothing to cast without torch
        return
    for f in root.rglob("adapter_model.safetensors"):
        if any(p in SKIP_DIRS or p.startswith("checkpoint-") for p in f.parts):
            continue
        t = load_file(f)
        if any(v.dtype == torch.float32 for v in t.values()):
            save_file({k: v.to(torch.bfloat16) for k, v in t.items()}, f, metadata={"format": "pt"})


def dedupe(root: Path, min_bytes: int = 2**20) -> int:
    """Hard-link identical files of at least ``min_bytes`` below ``root`` to one copy (every
    adapter folder holds the same 11 MB tokenizer.json; tar then stores it once)."""
    import hashlib
    import os

    first: dict[tuple[int, str], Path] = {}
    linked = 0
    for f in sorted(root.rglob("*")):
        if not f.is_file() or f.is_symlink() or f.stat().st_size < min_bytes:
            continue
        key = (f.stat().st_size, hashlib.sha256(f.read_bytes()).hexdigest())
        if key not in first:
            first[key] = f
        elif not f.samefile(first[key]):
            tmp = f.with_name(f.name + ".link")
            os.link(first[key], tmp)
            os.replace(tmp, f)
            linked += 1
    return linked


def _keep(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
    parts = Path(info.name).parts
    if any(p in SKIP_DIRS or p.startswith("checkpoint-") for p in parts):
        return None
    if Path(info.name).suffix in SKIP_SUFFIXES or Path(info.name).name in SKIP_NAMES:
        return None
    return info


def keeps_checkpoints(out: Path) -> bool:
    """Whether the run folder ``out`` saved step checkpoints and kept them all (its
    ``recipe.yaml``: ``save_strategy: steps``, ``save_total_limit: null``), which is how a
    plan asks for them to be read later (``matsql train pick-checkpoint``)."""
    f = out / "recipe.yaml"
    if not f.is_file() or not any(out.glob("checkpoints/*/checkpoint-*")):
        return False
    import yaml

    tr = (yaml.safe_load(f.read_text()) or {}).get("trainer") or {}
    return tr.get("save_strategy") == "steps" and tr.get("save_total_limit") is None


def unread(run_dir: Path, stage: str, manifest: dict, manifests: list[dict]) -> bool:
    """A done stage whose kept checkpoints no finished stage has read yet."""
    out = _local_out(run_dir, Path(manifest["out"]))
    if not keeps_checkpoints(out):
        return False
    name = Path(manifest["out"]).name
    for m in manifests:
        if m.get("status") == "done" and any(
            Path(a).name == name and Path(a).parent.name == run_dir.name for a in m.get("argv") or []
        ):
            return False
    return True


def pack_stage(run_dir: Path, stage: str, manifest: dict) -> bytes:
    """One stage as a tar.gz (paths relative to the run folder's parent)."""
    out = Path(manifest["out"])
    local = _local_out(run_dir, out)
    if local.is_dir():
        bf16_adapters(local)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        base = run_dir.parent
        for p in (local, run_dir / "manifests" / f"{stage}.json", run_dir / "logs" / f"{stage}.log"):
            if p.exists():
                tar.add(p, arcname=str(p.relative_to(base)), filter=_keep)
    return buf.getvalue()


def spent_sft_data(run_dir: Path) -> list[str]:
    """The ``sft-data/<agent>`` datasets that a finished training stage of ``run_dir`` has read
    (``--set data.sources.N.path=.../sft-data/<agent>`` in its argv). `study.sh pack` leaves these
    behind and carries the rest: a stage still to come (v2's sft-selector, leases later) needs
    its dataset in the next session's checkout, where the run folder arrives only by hand-off."""
    spent = set()
    for m in (run_dir / "manifests").glob("*.json"):
        man = json.loads(m.read_text())
        argv = man.get("argv") or []
        if man.get("status") != "done" or argv[:1] != ["train"]:
            continue
        for a in argv:
            key, _, path = a.partition("=")
            parts = Path(path).parts
            if key.startswith("data.sources.") and "sft-data" in parts and parts[-1] != "sft-data":
                spent.add(parts[parts.index("sft-data") + 1])
    return sorted(spent)


def _local_out(run_dir: Path, out: Path) -> Path:
    """The stage output inside ``run_dir`` (manifests hold absolute paths of the machine that ran)."""
    parts = out.parts
    name = run_dir.name
    if name in parts:
        i = len(parts) - 1 - parts[::-1].index(name)
        return run_dir.joinpath(*parts[i + 1 :])
    return out


def ship(run_dir: Path, dest: Path, max_files: int = 8, max_mib: float = 60) -> list[str]:
    ledger = run_dir / ".shipped"
    shipped = set(ledger.read_text().split()) if ledger.exists() else set()
    dest.mkdir(parents=True, exist_ok=True)
    files, size, sent = 0, 0, []
    paths = sorted((run_dir / "manifests").glob("*.json"), key=lambda p: p.stat().st_mtime)
    manifests = {p.stem: json.loads(p.read_text()) for p in paths}
    for stage, m in manifests.items():
        if stage in shipped or m.get("status") != "done":
            continue
        if unread(run_dir, stage, m, list(manifests.values())):
            print(f"{stage}: held until a finished stage reads its checkpoints (they do not travel)")
            continue
        blob = pack_stage(run_dir, stage, m)
        chunks = [blob[i : i + PART] for i in range(0, len(blob), PART)] or [b""]
        if len(chunks) > max_files or len(blob) > max_mib * 2**20:
            print(
                f"{stage}: {len(blob) / 2**20:.1f} MiB is more than one call brings back; "
                "left for `study.sh pack`"
            )
            shipped.add(stage)
            ledger.write_text("\n".join(sorted(shipped)) + "\n")
            continue
        if files + len(chunks) > max_files or size + len(blob) > max_mib * 2**20:
            continue  # the next poll takes it; smaller later stages may still fit now
        for i, c in enumerate(chunks):
            name = f"{stage}.tgz" if len(chunks) == 1 else f"{stage}.tgz.part{i:02d}"
            (dest / name).write_bytes(c)
        files += len(chunks)
        size += len(blob)
        sent.append(stage)
        shipped.add(stage)
        ledger.write_text("\n".join(sorted(shipped)) + "\n")
    return sent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("dest", type=Path, nargs="?")
    ap.add_argument("--cast-only", action="store_true", help="only cast RUN_DIR's adapters to bf16")
    ap.add_argument("--dedupe", action="store_true", help="only hard-link RUN_DIR's identical big files")
    ap.add_argument(
        "--spent-sft-data", action="store_true", help="print sft-data/ folders already trained on"
    )
    ap.add_argument("--max-files", type=int, default=8)
    ap.add_argument("--max-mib", type=float, default=60)
    a = ap.parse_args()
    if a.cast_only:
        bf16_adapters(a.run_dir)
        return
    if a.dedupe:
        print(f"hard-linked {dedupe(a.run_dir)} identical file(s)")
        return
    if a.spent_sft_data:
        print("\n".join(spent_sft_data(a.run_dir)))
        return
    if a.dest is None:
        ap.error("DEST is required unless --cast-only")
    sent = ship(a.run_dir, a.dest, a.max_files, a.max_mib)
    print(f"shipped: {', '.join(sent) or 'nothing new'}")


if __name__ == "__main__":
    main()
