"""The Lightning door under strategy="ddp" on 2 CPU processes (gloo), for test_doors.py.

    python _lightning_ddp.py FOLDER CELL [CELL ...]

FOLDER/CELL.json holds a command-line run's spec and scheduler config; rank 0 writes the final
weights to FOLDER/CELL.pt. Lightning starts the second process by running this script again.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import lightning.pytorch as L
import torch
from torch.nn import functional as F

from hessbatch import SchedulerConfig
from hessbatch.deep._cli_train import build_from_spec
from hessbatch.deep.lightning import HessbatchCallback


def run(folder: Path, cell: str) -> None:
    ref = json.loads((folder / f"{cell}.json").read_text())
    spec = ref["spec"]
    bundle, model = build_from_spec(spec, torch.device("cpu"))
    config = SchedulerConfig.from_dict(ref["config"])
    opt = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=spec["momentum"],
                          weight_decay=spec["weight_decay"])
    cb = HessbatchCallback(config, F.cross_entropy, seed=spec["seed"],
                           hessian_batch_size=spec["hessian_batch"],
                           eig_method=spec["eig_method"], max_hvp=spec["max_hvp"],
                           eig_tol=spec["eig_tol"], adversary=spec["adversary"])
    logged: set[str] = set()

    class Net(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, x):
            return self.model(x)

        def training_step(self, batch, batch_idx):
            x, y = batch
            return F.cross_entropy(self(x), y)

        def on_train_batch_end(self, outputs, batch, batch_idx):
            logged.update(k for k in self.trainer.callback_metrics if k.startswith("hessbatch"))

        def configure_optimizers(self):
            return opt

        def train_dataloader(self):
            return cb.dataloader(bundle.train)

    trainer = L.Trainer(max_epochs=config.epochs, accelerator="cpu", devices=2,
                        strategy="ddp", use_distributed_sampler=False, logger=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        enable_checkpointing=False, num_sanity_val_steps=0, callbacks=[cb])
    trainer.fit(Net())
    if trainer.global_rank == 0:
        torch.save({"weights": model.state_dict(), "world_size": trainer.world_size,
                    "logged": logged}, folder / f"{cell}.pt")


if __name__ == "__main__":
    torch.set_num_threads(1)
    for name in sys.argv[2:]:
        run(Path(sys.argv[1]), name)
