"""A PyTorch Lightning fit reported to the chat: epochs on one edited message, the chart at the end.

Needs PyTorch Lightning (``pip install lightning``, which brings torch); StatsBot's client itself
installs none of it. Without it the script says so and exits.

    python -c "import experiment_bot; experiment_bot.setup()"   # once
    python examples/lightning_callback.py

Server: EXPERIMENT_BOT_URL (default http://127.0.0.1:8000); key: EXPERIMENT_BOT_KEY or .env.
"""

from __future__ import annotations

import sys

import experiment_bot.lightning


def main() -> None:
    try:
        import lightning.pytorch as pl
        import torch
    except ImportError:
        sys.exit("this example needs PyTorch Lightning: pip install lightning")

    class Regressor(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))

        def training_step(self, batch: tuple, batch_idx: int) -> torch.Tensor:
            x, y = batch
            loss = torch.nn.functional.mse_loss(self.net(x).squeeze(-1), y)
            self.log("train_loss", loss, on_epoch=True, on_step=False)
            return loss

        def validation_step(self, batch: tuple, batch_idx: int) -> None:
            x, y = batch
            self.log("val_loss", torch.nn.functional.mse_loss(self.net(x).squeeze(-1), y))

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.Adam(self.parameters(), lr=1e-2)

    x = torch.randn(1024, 8)
    data = torch.utils.data.TensorDataset(x, x[:, :3].sum(dim=1))
    train, val = torch.utils.data.random_split(data, [896, 128])
    trainer = pl.Trainer(
        max_epochs=10,
        logger=False,
        enable_checkpointing=False,
        # Only the global-zero process reports when training on several devices.
        callbacks=[experiment_bot.lightning.Callback("regressor", tags=["lightning"])],
    )
    trainer.fit(
        Regressor(),
        torch.utils.data.DataLoader(train, batch_size=64, shuffle=True),
        torch.utils.data.DataLoader(val, batch_size=128),
    )


if __name__ == "__main__":
    main()
