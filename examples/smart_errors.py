"""Smart errors: a repeating loop error is one edited message; a crash names your line and explains it.

Run it against the local sandbox:

    python manage.py runbot
    python -c "import experiment_bot; experiment_bot.setup()"   # once
    python examples/smart_errors.py     # exits with the usual traceback and status 1

The chat gets two messages:

* 🔁 ``KeyError: 'label'`` in step ``augment``: **5 times**, iterations 3 … 19, with a hint
  ("nearest: 'labels'") and one traceback: ``bot.catch()`` reported each failure, let the loop
  go on, and edited one message instead of sending five;
* ❌ "train on sales.csv failed", with 💡 "No column 'sale' in DataFrame sales; nearest: 'sales'"
  and 📍 the failing line of this file (not pandas', not the client's).

Server: EXPERIMENT_BOT_URL (default http://127.0.0.1:8000); key: EXPERIMENT_BOT_KEY or .env.
"""

from __future__ import annotations

import logging
from typing import Any

from experiment_bot import bot


def load_sales() -> Any:
    columns = {"date": ["2026-01-01", "2026-01-02"], "store": [1, 2], "sales": [10.0, 12.5]}
    try:
        import pandas as pd
    except ImportError:  # without pandas the hint names the dict's nearest key instead
        return columns
    return pd.DataFrame(columns)


def augment(sample: dict[str, Any]) -> dict[str, Any]:
    return {**sample, "label": sample["label"] * 2}


@bot.track(name="train on sales.csv")
def main() -> None:
    samples = [{"x": i, "labels": i % 2} if i % 4 == 3 else {"x": i, "label": i % 2} for i in range(20)]
    for sample in bot.track_progress(samples, name="augment"):
        with bot.catch("augment"):  # 5 of 20 samples fail the same way: one message, edited
            augment(sample)
    sales = load_sales()
    print(sales["sale"])  # a typo: the crash message suggests 'sales'


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    main()
