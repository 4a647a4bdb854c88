"""Where a stage's command runs: this machine (a subprocess) or SLURM (submitit)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Protocol

from matsql.experiment.plan import Stage


class StageFailed(RuntimeError):
    pass


class Executor(Protocol):
    def run(self, stage: Stage, log: Path) -> None: ...


def _argv(stage: Stage) -> list[str]:
    return [sys.executable, "-m", "matsql.cli", *stage.argv]


class LocalExecutor:
    """Runs each stage as ``python -m matsql.cli ...``; output is teed to the stage log."""

    def __init__(self, env: dict[str, str] | None = None, echo: bool = True):
        self.env = {**os.environ, **(env or {})}
        self.echo = echo

    def run(self, stage: Stage, log: Path) -> None:
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("a", encoding="utf-8") as f:
            f.write(f"$ {stage.command}\n")
            f.flush()
            proc = subprocess.Popen(
                _argv(stage), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=self.env
            )
            assert proc.stdout is not None
            for line in proc.stdout:
                f.write(line)
                if self.echo:
                    sys.stderr.write(line)
            rc = proc.wait()
        if rc != 0:
            raise StageFailed(f"stage {stage.name} failed with exit code {rc}; see {log}")


def _run_cli(argv: list[str]) -> None:  # pragma: no cover - runs inside the SLURM job
    env = dict(os.environ)
    subprocess.run([sys.executable, "-m", "matsql.cli", *argv], check=True, env=env)


class SlurmExecutor:
    """One SLURM job per stage through submitit; waits for it (stages are a chain).

    ``cluster="debug"`` runs the job in-process (submitit's debug executor): used by tests.
    """

    def __init__(self, folder: Path, job_name: str = "vl", cluster: str | None = None, **params: object):
        import submitit

        self.ex = submitit.AutoExecutor(folder=str(folder), cluster=cluster)
        self.job_name = job_name
        self.params = params

    def run(self, stage: Stage, log: Path) -> None:
        res = stage.resources
        params = dict(self.params)
        if "gpus" in res:
            params["gpus_per_node"] = int(res["gpus"])
        if "time_min" in res:
            params["timeout_min"] = int(res["time_min"])
        if "mem_gb" in res:
            params["mem_gb"] = int(res["mem_gb"])
        self.ex.update_parameters(name=f"{self.job_name}-{stage.name}", **params)
        job = self.ex.submit(_run_cli, stage.argv)
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("a") as f:
            f.write(f"$ {stage.command}\nsubmitted job {job.job_id}\n")
        try:
            job.result()
        except Exception as e:
            raise StageFailed(f"stage {stage.name} (job {job.job_id}) failed: {e}") from e
