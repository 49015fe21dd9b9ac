"""Pattern 3: a context manager around a block, with nested child runs and a log attachment.

Run it against the local sandbox:

    python manage.py runbot
    python -c "import experiment_bot; experiment_bot.setup()"   # once
    python examples/context_manager.py

Server: EXPERIMENT_BOT_URL (default http://127.0.0.1:8000); key: EXPERIMENT_BOT_KEY or .env.
The chat shows "Data preprocessing" with its three folds as children (a tree).
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

from experiment_bot import bot


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    log_path = Path(tempfile.gettempdir()) / "preprocessing.log"
    with bot.track("Data preprocessing", tags=["dataset=sales"]) as run:
        with log_path.open("w") as log:
            for fold in range(1, 4):
                with bot.track(f"fold {fold}", tags=[f"fold={fold}"]) as child:
                    time.sleep(0.5)
                    child.log_metrics(fold, rows=1000 * fold)
                    log.write(f"fold {fold}: {1000 * fold} rows\n")
        run.attach(log_path, "preprocessing log")


if __name__ == "__main__":
    main()
