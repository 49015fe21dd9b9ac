"""A tracked run that crashes: the chat gets the error and the traceback in a code block.

Run it against the local sandbox:

    python manage.py runbot
    python -c "import experiment_bot; experiment_bot.setup()"   # once
    python examples/crash.py        # exits with the usual traceback and status 1

Server: EXPERIMENT_BOT_URL (default http://127.0.0.1:8000); key: EXPERIMENT_BOT_KEY or .env.
"""

from __future__ import annotations

import logging

from experiment_bot import bot


def read_target(columns: list[str]) -> str:
    if "target" not in columns:
        raise KeyError("column 'target' not found; columns are " + ", ".join(columns))
    return "target"


@bot.track(name="train on sales.csv")
def main() -> None:
    for epoch in range(3):
        bot.log_metrics(epoch, loss=1 / (epoch + 1))
    read_target(["date", "store", "sales"])


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    main()
