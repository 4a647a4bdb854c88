"""The one `matsql` command; each sub-command maps to a stage (DESIGN.md).

Command bodies live next to the code they drive (``<package>/commands.py``); this file only
wires them together, so it stays import-light.

A missing optional dependency or model package ends a command with one line that names what is
missing and the exact install command, and a bad agents file with one line naming the file and
key, never a traceback (:class:`HintingGroup`).
"""

from __future__ import annotations

import logging
import os
import sys

import click
import typer
from typer.core import TyperGroup

import matsql
from matsql.benchmarks.commands import data_app
from matsql.evaluate.commands import compare, metrics, report
from matsql.evaluate.diagnose_cmd import diagnose_app
from matsql.evaluate.select_cmd import select
from matsql.experiment.commands import demo, experiment_app, publish
from matsql.labels.commands import labels_app
from matsql.rollout.commands import rollout, rollout_merge
from matsql.sql.commands import eval_sql
from matsql.train.commands import train_app

#: Optional module -> the command that installs it (pyproject extras).
INSTALL_HINTS = {
    **dict.fromkeys(
        ("torch", "transformers", "accelerate", "peft", "trl", "datasets", "gguf", "safetensors"),
        "pip install 'matsql[ml]'",
    ),
    **dict.fromkeys(("submitit", "huggingface_hub"), "pip install 'matsql[cluster]'"),
    "vllm": "pip install vllm",
    "statsmodels": "pip install 'matsql[dev]'",
}


def missing_dependency_message(e: ModuleNotFoundError) -> str | None:
    """One line for a missing third-party module: what is missing and how to install it."""
    name = (e.name or "").split(".")[0]
    if not name or name == "matsql":
        return None  # a bug in matsql itself: keep the traceback
    hint = INSTALL_HINTS.get(name, f"pip install {name.replace('_', '-')}")
    return f"error: the optional dependency {name!r} is not installed; install it with: {hint}"


class HintingGroup(TyperGroup):
    """Turns a missing optional dependency or model package into one line and exit code 1."""

    def invoke(self, ctx: click.Context):  # type: ignore[override]
        from matsql.models import ModelIntegrityError, ModelResolutionError
        from matsql.team import TeamError

        try:
            return super().invoke(ctx)
        except ModuleNotFoundError as e:
            msg = missing_dependency_message(e)
            if msg is None:
                raise
        except (ModelResolutionError, ModelIntegrityError) as e:
            msg = f"error: {e}"
        except TeamError as e:  # a bad agents file: the file and key, not a traceback
            click.echo(f"error: {e}", err=True)
            raise typer.Exit(2) from None
        click.echo(msg, err=True)
        raise typer.Exit(1)


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time (a test runner swaps it per call)."""

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def configure_logging() -> None:
    """Show matsql's own log lines (level ``MATSQL_LOG_LEVEL``, default INFO) on stderr, so they
    land in each stage's log. Why: without a handler Python drops INFO, and the lines that
    account for a stage's fixed cost (vLLM engine start, import time, process age, adapter
    swaps, GGUF loads) never reached a stage log before session 16."""
    logger = logging.getLogger("matsql")
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("matsql %(levelname)s %(asctime)s %(message)s", "%H:%M:%S"))
        logger.addHandler(handler)
    logger.setLevel(os.environ.get("MATSQL_LOG_LEVEL", "INFO").upper())


def _version(value: bool) -> None:
    if value:
        typer.echo(f"matsql {matsql.__version__}")
        raise typer.Exit()


app = typer.Typer(
    name="matsql",
    help="Multi-agent text-to-SQL: rollouts, preference labels, SFT/ORPO training, selection and paired statistics.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    cls=HintingGroup,
)


@app.callback()
def _main(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="print matsql's version and exit"
    ),
) -> None:
    """Multi-agent text-to-SQL: rollouts, preference labels, SFT/ORPO training, selection and
    paired statistics."""
    configure_logging()


app.add_typer(data_app, name="data")
app.command("eval-sql")(eval_sql)
app.command("rollout")(rollout)
app.command("rollout-merge")(rollout_merge)
app.command("metrics")(metrics)
app.add_typer(labels_app, name="labels")
app.add_typer(train_app, name="train")
app.command("select")(select)
app.command("compare")(compare)
app.add_typer(diagnose_app, name="diagnose")
app.command("report")(report)
app.add_typer(experiment_app, name="experiment")
app.command("demo")(demo)
app.command("publish")(publish)


if __name__ == "__main__":  # pragma: no cover
    app()
