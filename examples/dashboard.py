"""A few runs side by side, to watch on the live dashboard: send /dashboard in the chat (and pin it).

Run it against the local sandbox:

    python manage.py runbot
    python -c "import experiment_bot; experiment_bot.setup()"   # once
    python examples/dashboard.py               # about 90 s; --seconds 30 for a shorter demo

Server: EXPERIMENT_BOT_URL (default http://127.0.0.1:8000); key: EXPERIMENT_BOT_KEY or .env.
Three tracked runs go in parallel threads (each a top-level run with its own colour tag); the
dashboard shows each one's progress, ETA, last loss, machine and heartbeat age, lists them under
"Recently ended" when they finish, and stops updating once nothing has run for an hour.
"""

from __future__ import annotations

import argparse
import logging
import math
import threading
import time

from experiment_bot import bot

RUNS = [
    ("resnet50", ["lr=0.1"], 1.0),
    ("resnet50", ["lr=0.01"], 0.8),
    ("xgboost baseline", ["depth=6"], 0.6),
]
STEPS = 30


def train(name: str, tags: list[str], speed: float, seconds: float) -> None:
    steps = max(1, round(STEPS * speed))
    pause = seconds * speed / steps
    with bot.track(name, tags=tags, total=steps, heartbeat_interval=max(1.0, min(10.0, seconds / 10))) as run:
        for step in range(1, steps + 1):
            time.sleep(pause)  # one "epoch"
            run.log_metrics(step, loss=math.exp(-step / (10 * speed)))
            run.set_progress(step, steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=90.0, help="how long the longest run takes")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    threads = [threading.Thread(target=train, args=(name, tags, speed, args.seconds), name=f"{name} {tags[0]}")
               for name, tags, speed in RUNS]
    for thread in threads:
        thread.start()
    print("running: send /dashboard in the chat", flush=True)
    for thread in threads:
        thread.join()
    bot.flush(30)


if __name__ == "__main__":
    main()
