"""Pattern 1: quick notifications.

Run it against the local sandbox:

    python manage.py runbot            # terminal 1: server + bot + sandbox web chat (prints its URL)
    pip install ./client               # or: export PYTHONPATH=client
    python -c "import experiment_bot; experiment_bot.setup()"   # once: open the printed link, press Start
    python examples/quick_notify.py

The key is read from EXPERIMENT_BOT_KEY (or the .env that setup() wrote) and the server from
EXPERIMENT_BOT_URL (default http://127.0.0.1:8000).
"""

from __future__ import annotations

import logging

from experiment_bot import bot


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    bot.notify("Training started")
    bot.notify("*Validation* accuracy: `0.93`", "success", format="markdown", metadata={"fold": 3})
    bot.notify("Disk is 90% full", "warning")
    # Nothing above waited for the network; the messages are delivered by a background
    # thread and flushed when the script exits (at most 5 seconds).


if __name__ == "__main__":
    main()
