"""Stop, pause and act on a running script from the chat.

The run's messages in Telegram carry ⏹ Stop, ⏸ Pause / ▶ Resume (with a progress bar) and the
buttons you declare with ``actions=``. A tap waits on the server and reaches this script in the
answer to its next heartbeat (nothing connects to your machine); the script acts on it at its
next progress step. After ⏹ Stop the ``with`` block ends, the code after it still runs (save
your model), and the chat shows "⏹️ stopped from Telegram" with the last metrics.

Run it against the local sandbox, then tap the buttons in the web chat:

    python manage.py runbot
    python -c "import experiment_bot; experiment_bot.setup()"   # once
    python examples/stop_from_chat.py

Server: EXPERIMENT_BOT_URL (default http://127.0.0.1:8000); key: EXPERIMENT_BOT_KEY or .env.
``EPOCHS`` (default 300) sets the length of the run.
"""

from __future__ import annotations

import logging
import math
import os
import time

from experiment_bot import bot


class Trainer:
    def __init__(self) -> None:
        self.lr = 0.1
        self.loss = 1.0

    def halve_lr(self) -> float:
        """An action button: runs in this process, between two epochs."""
        self.lr /= 2
        return self.lr  # shown in the chat: "👆 lr ×0.5 done → 0.05"

    def epoch(self, epoch: int) -> float:
        time.sleep(0.2)  # the training work
        self.loss = self.loss * (1 - self.lr / 10) + 0.01 * math.sin(epoch)
        return self.loss


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    trainer = Trainer()
    epochs = int(os.environ.get("EPOCHS", "300"))
    with bot.track("training", heartbeat_interval=5, actions={"lr ×0.5": trainer.halve_lr}) as run:
        for epoch in bot.track_progress(range(epochs), every="2%"):
            run.log_metrics(epoch, loss=trainer.epoch(epoch), lr=trainer.lr)
    # Reached after the last epoch, and after ⏹ Stop from the chat (run.status tells which).
    print(f"run {run.status}: saving the model (lr {trainer.lr:g}, loss {trainer.loss:.4f})")


if __name__ == "__main__":
    main()
