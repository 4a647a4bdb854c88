"""``python -m matsql.train`` = ``matsql train`` (for ``accelerate launch -m matsql.train ...``)."""

from matsql.train.commands import train_app

if __name__ == "__main__":
    train_app()
