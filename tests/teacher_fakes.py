"""A scripted fake teacher model for the LLM-teacher tests, in process or behind the repo's HTTP
test server (``matsql.backends.server.OpenAIServer``, used as it is).

The fake reads what the teacher prompt tells it (the candidate SQL and the execution verdict)
and answers per a script: ``agree`` (a critique concluding the verdict, with chatter after it
that must not reach the student), ``disagree`` (the opposite verdict), ``silent`` (no
``Conclude:``) or ``leak`` (names the reference query). Each prompt's k-th call takes the
script's k-th action (the last one repeats); unscripted prompts agree, or with
``disagree_rate`` disagree on a draw keyed by (seed, prompt), like a sampled model would.

Serve it for an end-to-end run of ``matsql train sft-data --teacher``::

    python -m tests.teacher_fakes --port 0 --disagree-rate 0.4   # prints the URL
"""

from __future__ import annotations

import argparse
import hashlib
import re
from collections import Counter

from matsql.backends.base import ChatPrompt, GenerationStats
from matsql.backends.server import OpenAIServer
from matsql.records import sampling_prompt_digest

_SQL = re.compile(r"Candidate SQL:\n```sql\n(.*?)\n```", re.DOTALL)
_VERDICT = re.compile(r"The candidate is (correct|incorrect)\.")


def read_prompt(p: ChatPrompt) -> tuple[str, str]:
    """(candidate SQL, execution verdict) as the teacher prompt states them."""
    user = p.messages[-1][1]
    sql, verdict = _SQL.search(user), _VERDICT.search(user)
    if sql is None or verdict is None:
        raise ValueError(f"not a teacher prompt: {user[:200]!r}")
    return sql.group(1), verdict.group(1)


def answer(action: str, sql: str, verdict: str, seed: int) -> str:
    other = "incorrect" if verdict == "correct" else "correct"
    does = "answers" if verdict == "correct" else "does not answer"
    if action == "agree":
        return f" Sample {seed % 997}: `{sql}` {does} the question.\nConclude: {verdict}\nThanks for asking!"
    if action == "disagree":
        return f" Sample {seed % 997}: `{sql}` looks fine to me.\nConclude: {other}"
    if action == "silent":
        return f" Sample {seed % 997}: `{sql}` is a query."
    if action == "leak":
        return f" Compared with the reference query, `{sql}` {does} the question.\nConclude: {verdict}"
    raise ValueError(f"unknown action {action!r}")


class ScriptedTeacher:
    """A Backend whose answers follow ``script`` (candidate SQL -> actions in call order)."""

    name = "scripted-teacher"

    def __init__(self, script: dict[str, list[str]] | None = None, disagree_rate: float = 0.0) -> None:
        self.script = script or {}
        self.disagree_rate = disagree_rate
        self.stats = GenerationStats()
        self.seen: Counter[str] = Counter()
        self.calls: list[dict] = []  # one per generate: the SQLs asked and the sampling arguments

    def _action(self, p: ChatPrompt, sql: str, seed: int) -> str:
        k = self.seen[sql]
        self.seen[sql] += 1
        if sql in self.script:
            actions = self.script[sql]
            return actions[min(k, len(actions) - 1)]
        u = int(hashlib.sha256(f"{seed}|{sampling_prompt_digest(p)}".encode()).hexdigest()[:8], 16) / 16**8
        return "disagree" if u < self.disagree_rate else "agree"

    def generate(
        self,
        prompts: list[ChatPrompt],
        n: int = 1,
        temperature: float = 0.0,
        max_tokens: int = 256,
        stop: list[str] | None = None,
        seed: int = 0,
    ) -> list[list[str]]:
        out = []
        sqls = []
        for p in prompts:
            sql, verdict = read_prompt(p)
            sqls.append(sql)
            out.append([answer(self._action(p, sql, seed), sql, verdict, seed) for _ in range(n)])
        self.calls.append(
            {"sqls": sqls, "seed": seed, "temperature": temperature, "prefixes": [p.prefix for p in prompts]}
        )
        self.stats.calls += 1
        self.stats.prompts += len(prompts)
        self.stats.completions += len(prompts) * n
        return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m tests.teacher_fakes", description=__doc__.split("\n\n")[0])
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--served-model-name", default="scripted-teacher")
    ap.add_argument("--disagree-rate", type=float, default=0.4)
    a = ap.parse_args(argv)
    server = OpenAIServer(
        ScriptedTeacher(disagree_rate=a.disagree_rate), port=a.port, model_name=a.served_model_name
    )
    print(f"matsql server listening on {server.url}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
