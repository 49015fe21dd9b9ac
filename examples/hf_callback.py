"""A Hugging Face ``Trainer`` reported to the chat: steps on one edited message, logged losses and
eval metrics as points, the chart at the end.

Needs ``transformers`` and ``torch`` (``pip install transformers torch``); StatsBot's client
itself installs neither. The model is a tiny one built here (nothing is downloaded). Without the
packages the script says so and exits.

    python -c "import experiment_bot; experiment_bot.setup()"   # once
    python examples/hf_callback.py

Server: EXPERIMENT_BOT_URL (default http://127.0.0.1:8000); key: EXPERIMENT_BOT_KEY or .env.
"""

from __future__ import annotations

import sys
import tempfile

import experiment_bot.hf


def main() -> None:
    try:
        import torch
        import transformers
    except ImportError:
        sys.exit("this example needs transformers and torch: pip install transformers torch")

    class TinyRegressor(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = torch.nn.Linear(8, 1)

        def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> dict:
            out = self.net(x).squeeze(-1)
            loss = torch.nn.functional.mse_loss(out, labels) if labels is not None else None
            return {"loss": loss, "logits": out}

    class Points(torch.utils.data.Dataset):
        def __init__(self, n: int) -> None:
            self.x = torch.randn(n, 8)

        def __len__(self) -> int:
            return len(self.x)

        def __getitem__(self, i: int) -> dict:
            return {"x": self.x[i], "labels": self.x[i, :3].sum()}

    with tempfile.TemporaryDirectory() as output_dir:
        args = transformers.TrainingArguments(
            output_dir=output_dir,
            num_train_epochs=5,
            per_device_train_batch_size=32,
            logging_steps=10,
            eval_strategy="epoch",
            save_strategy="no",
            report_to=[],
            use_cpu=True,
        )
        trainer = transformers.Trainer(
            model=TinyRegressor(),
            args=args,
            train_dataset=Points(1024),
            eval_dataset=Points(128),
            callbacks=[experiment_bot.hf.Callback("tiny regressor", tags=["hf"])],
        )
        trainer.train()


if __name__ == "__main__":
    main()
