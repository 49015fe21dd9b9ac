"""Pattern 2: a function decorator — start and finish messages with runtime and peak memory.

Run it against the local sandbox:

    python manage.py runbot
    python -c "import experiment_bot; experiment_bot.setup()"   # once
    python examples/decorator.py

Server: EXPERIMENT_BOT_URL (default http://127.0.0.1:8000); key: EXPERIMENT_BOT_KEY or .env.
"""

from __future__ import annotations

import logging
import random
import time

from experiment_bot import bot


@bot.track
def load_data() -> list[float]:
    time.sleep(1)
    return [random.random() for _ in range(10_000)]


@bot.track(name="train model", tags=["lr=0.01", "seed=7"], heartbeat_interval=10)
def train_model(data: list[float]) -> float:
    loss = 1.0
    for epoch in range(1, 6):
        time.sleep(1)
        loss *= 0.7
        bot.log_metrics(epoch, loss=loss, mean=sum(data) / len(data))
    return loss


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    final = train_model(load_data())
    bot.notify(f"final loss {final:.4f}", "success")


if __name__ == "__main__":
    main()
