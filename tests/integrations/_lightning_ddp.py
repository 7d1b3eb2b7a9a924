"""The Lightning door on 2 CPU processes (gloo), for test_doors.py.

    python _lightning_ddp.py FOLDER STRATEGY CELL [CELL ...]

STRATEGY is ``ddp`` (Lightning starts the second process by running this script again) or
``ddp_spawn`` (Lightning spawns both workers from this process: the module and the callback
are pickled, so everything here lives at module level). FOLDER/CELL.json holds a command-line
run's spec and scheduler config; rank 0 writes the final weights to FOLDER/CELL.pt at the end of
fit, the same way under both strategies.
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


class Net(L.LightningModule):
    """The command line's model and optimizer, trained through the callback's loader."""

    def __init__(self, model, opt, cb, train, out: Path):
        super().__init__()
        self.model, self.opt, self.cb, self.train_set, self.out = model, opt, cb, train, out
        self.logged: set[str] = set()

    def forward(self, x):
        return self.model(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def on_train_batch_end(self, outputs, batch, batch_idx):
        self.logged.update(k for k in self.trainer.callback_metrics
                           if k.startswith("hessbatch"))

    def on_fit_end(self):
        if self.trainer.global_rank == 0:
            torch.save({"weights": self.model.state_dict(), "world_size": self.trainer.world_size,
                        "start_method": getattr(self.trainer.strategy, "_start_method", None),
                        "logged": self.logged}, self.out)

    def configure_optimizers(self):
        return self.opt

    def train_dataloader(self):
        return self.cb.dataloader(self.train_set)


def run(folder: Path, strategy: str, cell: str) -> None:
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
    trainer = L.Trainer(max_epochs=config.epochs, accelerator="cpu", devices=2,
                        strategy=strategy, use_distributed_sampler=False, logger=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        enable_checkpointing=False, num_sanity_val_steps=0, callbacks=[cb])
    trainer.fit(Net(model, opt, cb, bundle.train, folder / f"{cell}.pt"))


if __name__ == "__main__":
    torch.set_num_threads(1)
    if sys.argv[2] == "ddp_spawn":
        # spawned workers receive the module's tensors through shared memory; the default
        # file-descriptor strategy cannot resize its segment in some sandboxes (this CI's)
        torch.multiprocessing.set_sharing_strategy("file_system")
    for name in sys.argv[3:]:
        run(Path(sys.argv[1]), sys.argv[2], name)
