from pathlib import Path

import pytest
import yaml

from matsql.rollout.gating import should_fix

CASES = yaml.safe_load((Path(__file__).parent / "fixtures/agents/gating_cases.yaml").read_text())


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c['policy']}-{c['exec_ok']}-{c['verdicts']}")
def test_gate(case):
    assert should_fix(case["policy"], case["exec_ok"], case["verdicts"]) is case["fix"]


def test_unknown_policy_is_an_error():
    with pytest.raises(ValueError, match="unknown gating policy"):
        should_fix("sometimes", True, {})
