"""Change one import: ``from experiment_bot import tqdm`` reports an existing tqdm loop to the chat.

The console bar is drawn by the real tqdm as before (when it is installed; without it nothing is
drawn and the chat still gets the progress). ``set_postfix`` values become metrics, and the
metric chart arrives with the finish. Runs with the standard library alone.

    python manage.py runbot                                      # terminal 1
    python -c "import experiment_bot; experiment_bot.setup()"   # once
    python examples/tqdm_loop.py

Server: EXPERIMENT_BOT_URL (default http://127.0.0.1:8000); key: EXPERIMENT_BOT_KEY or .env.
"""

from __future__ import annotations

import math
import time

from experiment_bot import tqdm  # was: from tqdm import tqdm


def main() -> None:
    # A loop over an iterable: its own tracked run named by desc, one message edited every 10%.
    for _ in tqdm(range(50), desc="tokenizing"):
        time.sleep(0.02)

    # Manual updates, with metrics from set_postfix.
    with tqdm(total=30, desc="training", unit="batch") as bar:
        for step in range(30):
            time.sleep(0.1)
            bar.update(1)
            bar.set_postfix(loss=math.exp(-step / 10), lr=1e-3)


if __name__ == "__main__":
    main()
