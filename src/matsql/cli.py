"""The one `matsql` command; each sub-command maps to a stage (DESIGN.md).

Command bodies live next to the code they drive (``<package>/commands.py``); this file only
wires them together, so it stays import-light.
"""

from __future__ import annotations

import typer

from matsql.benchmarks.commands import data_app
from matsql.evaluate.commands import compare, metrics, report
from matsql.evaluate.diagnose_cmd import diagnose_app
from matsql.evaluate.select_cmd import select
from matsql.experiment.commands import demo, experiment_app, publish
from matsql.labels.commands import labels_app
from matsql.rollout.commands import rollout, rollout_merge
from matsql.sql.commands import eval_sql
from matsql.train.commands import train_app

app = typer.Typer(
    name="matsql",
    help="Multi-agent text-to-SQL: rollouts, preference labels, SFT/ORPO training, selection and paired statistics.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
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
