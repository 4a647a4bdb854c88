"""E4: does the fixer use the critique? Pure measures over rollout records, plus a
counterfactual probe that re-runs the fixer with altered critiques through a backend.

- reach: the recorded fixer prompt digest equals the digest of a prompt rebuilt from the
  branch's critiques (so the critique text really was in the fixer's input).
- change rate: how often the fixer's SQL differs from the planner SQL, split by whether any
  critique said ``incorrect`` or all said ``correct``. A fixer that ignores critiques changes
  SQL at the same rate in both groups.
- flips: among branches the fixer ran on, wrong->right and right->wrong rates.

Validators (``validator_diagnostics``): each critique's verdict against the planner SQL's
correctness (what INDEP labels reward: catches, misses, false alarms, unknown verdicts) and,
where the fixer ran on the critique's branch, how often a caught wrong SQL ended correct (what
COLLAB labels reward). A validator can be accurate yet useless to a fixer that ignores it, or
the reverse; the two views side by side show which.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import asdict, dataclass

from matsql.records import Critique, RolloutRecord


def _norm(sql: str | None) -> str:
    return re.sub(r"\s+", " ", (sql or "").strip().rstrip(";")).lower()


def _rate(num: int, den: int) -> float | None:
    return num / den if den else None


@dataclass
class FixerDiagnostics:
    branches_fixed: int
    reach_checked: int
    reach_ok: int
    flagged: int  # fixer ran and some critique said incorrect
    flagged_changed: int
    cleared: int  # fixer ran and every critique said correct
    cleared_changed: int
    planner_wrong: int
    wrong_to_right: int
    planner_right: int
    right_to_wrong: int
    sampled_branches: int = 0  # branches with several fixer samples (label-time E1 data)
    sampled_distinct: int = 0  # ... whose samples are not all the same text

    def rates(self) -> dict[str, float | None]:
        return {
            "reach": _rate(self.reach_ok, self.reach_checked),
            "change_when_incorrect": _rate(self.flagged_changed, self.flagged),
            "change_when_correct": _rate(self.cleared_changed, self.cleared),
            "wrong_to_right": _rate(self.wrong_to_right, self.planner_wrong),
            "right_to_wrong": _rate(self.right_to_wrong, self.planner_right),
            "samples_differ": _rate(self.sampled_distinct, self.sampled_branches),
        }

    def as_dict(self) -> dict:
        return asdict(self) | {"rates": self.rates()}


def fixer_diagnostics(
    records: list[RolloutRecord], prompt_digest_of: Callable[[RolloutRecord, int, int], str] | None = None
) -> FixerDiagnostics:
    """``prompt_digest_of(record, candidate_index, branch_index)`` rebuilds the fixer prompt's
    digest from the record (injected; None skips the reach check)."""
    d = FixerDiagnostics(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
    for rec in records:
        for c in rec.candidates:
            for j, b in enumerate(c.branches):
                f = b.fix
                if f is None:
                    continue
                d.branches_fixed += 1
                if len(b.fixes) > 1:  # identical samples give E1 no contrast (greedy fixer)
                    d.sampled_branches += 1
                    d.sampled_distinct += int(len({x.text for x in b.fixes}) > 1)
                if prompt_digest_of is not None and f.prompt_digest:
                    d.reach_checked += 1
                    d.reach_ok += int(prompt_digest_of(rec, c.index, j) == f.prompt_digest)
                changed = _norm(f.sql) != _norm(c.planner.sql)
                verdicts = [x.verdict for x in b.critiques.values()]
                if any(v == "incorrect" for v in verdicts):
                    d.flagged += 1
                    d.flagged_changed += int(changed)
                elif verdicts and all(v == "correct" for v in verdicts):
                    d.cleared += 1
                    d.cleared_changed += int(changed)
                if c.correct:
                    d.planner_right += 1
                    d.right_to_wrong += int(not f.correct)
                else:
                    d.planner_wrong += 1
                    d.wrong_to_right += int(f.correct)
    return d


@dataclass
class ValidatorDiagnostics:
    agent: str
    critiques: int = 0
    unknown: int = 0
    caught: int = 0  # said incorrect, planner SQL wrong
    false_alarm: int = 0  # said incorrect, planner SQL right
    passed: int = 0  # said correct, planner SQL right
    missed: int = 0  # said correct, planner SQL wrong
    caught_fixed_runs: int = 0  # caught, and the fixer ran on this branch
    caught_fixed_right: int = 0  # ... and its SQL ended correct

    def rates(self) -> dict[str, float | None]:
        judged = self.caught + self.false_alarm + self.passed + self.missed
        catch = _rate(self.caught, self.caught + self.missed)
        keep = _rate(self.passed, self.passed + self.false_alarm)
        return {
            "accuracy": _rate(self.caught + self.passed, judged),
            "balanced_accuracy": None if catch is None or keep is None else (catch + keep) / 2,
            "catch_rate": catch,
            "false_alarm_rate": _rate(self.false_alarm, self.false_alarm + self.passed),
            "unknown_rate": _rate(self.unknown, self.critiques),
            "planner_wrong_share": _rate(self.caught + self.missed, judged),
            "fixed_after_catch": _rate(self.caught_fixed_right, self.caught_fixed_runs),
        }

    def as_dict(self) -> dict:
        return asdict(self) | {"rates": self.rates()}


def tally(d: ValidatorDiagnostics, verdict: str, correct: bool) -> str:
    """Count one verdict on a candidate of known correctness; returns its outcome's field name."""
    d.critiques += 1
    if verdict not in ("correct", "incorrect"):
        field = "unknown"
    elif verdict == "incorrect":
        field = "false_alarm" if correct else "caught"
    else:
        field = "passed" if correct else "missed"
    setattr(d, field, getattr(d, field) + 1)
    return field


def validator_diagnostics(records: list[RolloutRecord]) -> dict[str, ValidatorDiagnostics]:
    """Per validator, over every branch's critique (label-time branches included)."""
    out: dict[str, ValidatorDiagnostics] = {}
    for rec in records:
        for c in rec.candidates:
            for b in c.branches:
                for agent, crit in b.critiques.items():
                    d = out.setdefault(agent, ValidatorDiagnostics(agent))
                    if tally(d, crit.verdict, c.correct) == "caught" and b.fix is not None:
                        d.caught_fixed_runs += 1
                        d.caught_fixed_right += int(b.fix.correct)
    return dict(sorted(out.items()))


_CONCLUDE = re.compile(r"(conclude\s*:\s*\**\s*)(correct|incorrect)", re.IGNORECASE)


def flip_verdict(c: Critique) -> Critique:
    """The same critique with its conclusion reversed (counterfactual probe)."""
    new = "incorrect" if c.verdict == "correct" else "correct"
    matches = list(_CONCLUDE.finditer(c.text))
    if matches:
        m = matches[-1]
        text = c.text[: m.start(2)] + new + c.text[m.end(2) :]
    else:
        text = c.text.rstrip() + f"\nConclude: {new}"
    return c.model_copy(update={"text": text, "verdict": new})


def counterfactual_critiques(rec: RolloutRecord, cand_index: int, kind: str) -> dict[str, Critique] | None:
    """``flip``: each critique's verdict reversed. ``swap``: critiques taken from another candidate
    of the same question with a different planner SQL (None if there is none)."""
    cand = rec.candidates[cand_index]
    base = cand.main.critiques if cand.main else {}
    if not base:
        return None
    if kind == "flip":
        return {k: flip_verdict(v) for k, v in base.items()}
    if kind == "swap":
        for other in rec.candidates:
            if (
                other.index != cand_index
                and other.main
                and other.main.critiques
                and _norm(other.planner.sql) != _norm(cand.planner.sql)
            ):
                return dict(other.main.critiques)
        return None
    raise ValueError(f"unknown counterfactual {kind!r}; expected flip or swap")
