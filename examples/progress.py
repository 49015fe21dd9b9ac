"""Pattern 4: progress tracking — one message edited in place at every 10%.

Run it against the local sandbox:

    python manage.py runbot
    python -c "import experiment_bot; experiment_bot.setup()"   # once
    python examples/progress.py

Server: EXPERIMENT_BOT_URL (default http://127.0.0.1:8000); key: EXPERIMENT_BOT_KEY or .env.
"""

from __future__ import annotations

import logging
import math
import time

from experiment_bot import bot


def train_epoch(epoch: int) -> float:
    time.sleep(0.2)
    return math.exp(-epoch / 20)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    # Starts a tracked process named "training" because none is active; finishes it at the end.
    for epoch in bot.track_progress(range(100), name="training"):
        loss = train_epoch(epoch)
        bot.log_metrics(epoch, loss=loss)  # coalesced: sent with heartbeats, the last value always


if __name__ == "__main__":
    main()
