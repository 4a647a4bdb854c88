"""The rule of v2's ORPO learning-rate check, written before the check ran (session 14).

Why: in lease 2 both iter1 val-sel ORPO runs (recipes' learning rate 5e-5, 160 steps) left the
held-out pair margins where they started (reward accuracy 0.633 -> 0.621 INDEP, 0.485 -> 0.471
COLLAB; eval loss flat), and both checkpoint picks chose the earliest checkpoint. Lease 3 reruns
the same two runs and their picks at one other learning rate (``orpo_lr_check.sh``: a copy of the
run folder, ``--set vars.orpo_extra=--set trainer.learning_rate=LR``) and keeps it for every ORPO
run of both arms only if the picked checkpoints judge better:

    adopt  iff  mean over arms of the picked balanced accuracy (new LR)
                >= mean over arms of it (recipes' LR) + MARGIN (0.01)

Both arms count the same, so the rule favours neither. The pick's balanced accuracy is the
criterion the plan already uses to choose checkpoints (held-out label questions, not the
evaluation questions).

    python3 scripts/device/orpo_lr_rule.py RUN CHECK --lr 2.0e-4 --out decision.json [--apply]

``--apply`` (only when the rule adopts) moves the check's four stages (outputs, manifests, logs)
into RUN, the replaced ones to ``RUN/../lr-replaced/``, and takes them off RUN's ``.shipped``
ledger so that the next ``study.sh wait`` ships them home.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
from pathlib import Path

ARMS = ("collab", "indep")
STAGES = [f"{k}-iter1-val-sel-{arm}" for arm in ARMS for k in ("orpo", "pick")]
MARGIN = 0.01


def picked(run: Path, arm: str) -> dict:
    """The chosen checkpoint of ``pick-iter1-val-sel-ARM`` and its rates."""
    pick = json.loads((run / f"pick-iter1-val-sel-{arm}" / "pick.json").read_text(encoding="utf-8"))
    rates = pick["scores"][pick["chosen"]]["rates"]
    return {
        "chosen": pick["chosen"],
        "balanced_accuracy": rates["balanced_accuracy"],
        "catch_rate": rates["catch_rate"],
        "false_alarm_rate": rates["false_alarm_rate"],
    }


def held_out_pairs(run: Path, arm: str) -> dict:
    """The ORPO run's held-out pair metrics before and after training (its ``run.json``)."""
    out = run / f"orpo-iter1-val-sel-{arm}"
    m = json.loads((out / "run.json").read_text(encoding="utf-8")).get("metrics", {})
    keys = ("eval_rewards/accuracies", "eval_rewards/margins", "eval_loss")
    lr = re.search(r"^\s*learning_rate:\s*(\S+)", (out / "recipe.yaml").read_text(encoding="utf-8"), re.M)
    return {when: {k: m.get(when, {}).get(k) for k in keys} for when in ("eval_before", "eval")} | {
        "learning_rate": lr.group(1) if lr else None  # the recipe as the run resolved it
    }


def decide(old: dict[str, float], new: dict[str, float], margin: float = MARGIN) -> bool:
    """Adopt the new learning rate iff its mean picked balanced accuracy over the arms is at
    least ``margin`` above the old one's (pure)."""
    if set(old) != set(new) or not old:
        raise ValueError(f"arms differ: {sorted(old)} vs {sorted(new)}")
    mean = lambda d: sum(d.values()) / len(d)  # noqa: E731
    return mean(new) >= mean(old) + margin


def _repoint(path: Path, check: Path, run: Path) -> None:
    """Rewrite the check folder's absolute path as the run folder's in a moved JSON file: a
    manifest's ``out`` is where ``ship.py`` looks for the stage's files."""
    text = path.read_text(encoding="utf-8")
    path.write_text(text.replace(str(check.resolve()), str(run.resolve())), encoding="utf-8")


def apply(run: Path, check: Path) -> list[str]:
    """Move the check's stages into ``run`` (the replaced ones aside), point their manifests and
    run records at ``run``, and unlist them as shipped."""
    aside = run.parent / "lr-replaced"
    aside.mkdir(exist_ok=True)
    for s in STAGES:
        for sub, name in (("", s), ("manifests", f"{s}.json"), ("logs", f"{s}.log")):
            src, dst = check / sub / name, run / sub / name
            if dst.exists():
                (aside / sub).mkdir(parents=True, exist_ok=True)
                shutil.move(str(dst), str(aside / sub / name))
            if src.exists():
                shutil.move(str(src), str(dst))
        for f in [run / "manifests" / f"{s}.json", *(run / s).glob("*.json")]:
            if f.is_file():
                _repoint(f, check, run)
    ledger = run / ".shipped"
    if ledger.exists():
        kept = [s for s in ledger.read_text().split() if s not in STAGES]
        ledger.write_text("".join(f"{s}\n" for s in kept))
    return STAGES


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path, help="the plan's run folder (the recipes' learning rate)")
    ap.add_argument("check", type=Path, help="the check's copy (the new learning rate)")
    ap.add_argument("--lr", required=True, help="the new learning rate, as passed to the recipes")
    ap.add_argument("--out", type=Path, required=True, help="the decision, as JSON")
    ap.add_argument("--apply", action="store_true", help="move the check's stages in if adopted")
    args = ap.parse_args()
    old = {arm: picked(args.run, arm) for arm in ARMS}
    new = {arm: picked(args.check, arm) for arm in ARMS}
    adopt = decide(
        {a: v["balanced_accuracy"] for a, v in old.items()},
        {a: v["balanced_accuracy"] for a, v in new.items()},
    )
    out = {
        "rule": f"adopt iff mean picked balanced accuracy (new) >= mean (old) + {MARGIN}",
        "lr": args.lr,
        "adopt": adopt,
        "recipes_lr": {"picks": old, "pairs": {a: held_out_pairs(args.run, a) for a in ARMS}},
        "new_lr": {"picks": new, "pairs": {a: held_out_pairs(args.check, a) for a in ARMS}},
    }
    if adopt and args.apply:
        out["moved"] = apply(args.run, args.check)
    args.out.write_text(json.dumps(out, indent=1) + "\n", encoding="utf-8")
    verdict = f"adopt {args.lr}" if adopt else "keep the recipes' learning rate"
    print(f"orpo lr rule: {verdict}")
    for arm in ARMS:
        print(f"  {arm}: {old[arm]['balanced_accuracy']:.3f} ({old[arm]['chosen']}) -> "
              f"{new[arm]['balanced_accuracy']:.3f} ({new[arm]['chosen']})")  # fmt: skip


if __name__ == "__main__":
    main()
