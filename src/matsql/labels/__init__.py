"""Training data, all of it: preference pairs and SFT examples (``train/`` only trains).

Labelers: rollout records -> preference pairs, one pure module per label mode (DESIGN.md);
``label_<mode>(records, agent, prompt_fn, **opts) -> list[PreferencePair]``; the prompt
function is injected (``prompts.make_prompt_fn(schema_of)`` builds the real one). SFT data:
``sft_data`` (every agent, ``matsql train sft-data``, from ``sft_data_cmd``) with the rule-based
or LLM validator ``teacher`` and ``sqlparts``; ``fixer.fixer_sft`` is the one fixer SFT builder
(the E1 mix and the SFT-stage data). ``dataset`` writes pairs and label-mode SFT examples.
"""

from matsql.labels.collab import label_collab
from matsql.labels.collab_v2 import label_collab_v2
from matsql.labels.common import Group, PromptFn, Scored, SFTExample, pair_groups
from matsql.labels.fixer import label_e1, sft_balance, sft_e1
from matsql.labels.independent import label_independent
from matsql.labels.joint import label_joint
from matsql.labels.prompts import check_prompts, make_prompt_fn
from matsql.labels.registry import MODES_BY_AGENT, LabelRun, modes_for, run_labels
from matsql.labels.selector import label_selector

__all__ = [
    "MODES_BY_AGENT",
    "Group",
    "LabelRun",
    "PromptFn",
    "SFTExample",
    "Scored",
    "check_prompts",
    "label_collab",
    "label_collab_v2",
    "label_e1",
    "label_independent",
    "label_joint",
    "label_selector",
    "make_prompt_fn",
    "modes_for",
    "pair_groups",
    "run_labels",
    "sft_balance",
    "sft_e1",
]
