"""A Keras fit reported to the chat: one callback, epochs on one edited message, the chart at the end.

Needs Keras 3 with a backend (``pip install keras tensorflow``, or ``keras jax``, or ``keras
torch``); StatsBot's client itself installs none of them. Without Keras the script says so and
exits.

    python -c "import experiment_bot; experiment_bot.setup()"   # once
    python examples/keras_callback.py

Server: EXPERIMENT_BOT_URL (default http://127.0.0.1:8000); key: EXPERIMENT_BOT_KEY or .env.
"""

from __future__ import annotations

import sys

import experiment_bot.keras


def main() -> None:
    try:
        import keras
        import numpy as np
    except ImportError:
        sys.exit("this example needs Keras and a backend: pip install keras tensorflow")

    rng = np.random.default_rng(0)
    x = rng.normal(size=(2000, 20)).astype("float32")
    y = (x[:, :5].sum(axis=1) > 0).astype("float32")
    model = keras.Sequential(
        [keras.Input((20,)), keras.layers.Dense(32, activation="relu"), keras.layers.Dense(1, activation="sigmoid")]
    )
    model.compile(optimizer="adam", loss="binary_crossentropy", metrics=["accuracy"])
    # The run is named "toy classifier"; each epoch's loss/accuracy/val_* is a point of the chart.
    model.fit(
        x,
        y,
        epochs=10,
        validation_split=0.2,
        verbose=0,
        callbacks=[experiment_bot.keras.Callback("toy classifier", tags=["keras"])],
    )


if __name__ == "__main__":
    main()
