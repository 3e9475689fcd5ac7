"""Refit the lattice heads on the trained encoder's latents, as the estimator sees them.

Training computes every latent in train mode, where encoder dropout and BatchNorm's batch statistics
make it a noisy copy of the eval-mode latent that decoding uses. Heads fitted to noisy inputs regress
toward the mean lattice: the shipped LCS6Å model's heads were off by 0.33° on its own training
structures when given eval-mode latents. With the encoder frozen the latents are fixed, so refitting
the two small heads on them costs under a minute. Each head keeps the epoch with its lowest
validation error (the paper's mean absolute error), as the paper's early stopping keeps the best
validation epoch; epoch 0, the heads as trained, is a candidate.

The refit starts from freshly initialised heads by default: continuing from the heads as trained
stalls far from what the frozen latents allow (the quickstart model's validation length error 0.044 Å
continued against 0.030 Å fresh; docs/training.md).
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor

from nesfgen.config import TrainConfig
from nesfgen.errors import UserError, require
from nesfgen.model import NeSF, encode_all
from nesfgen.options import required
from nesfgen.sampling import TensorSet

#: each head, with the lattice parameters it predicts
HEADS = ("lengths", "angles")


@dataclass(frozen=True)
class RefitResult:
    """One refit: how long, the epoch each head kept, and its validation error before and after."""

    epochs: int
    init: str  # fresh | trained
    best_epoch: dict[str, int]  # per head; 0 = the head as trained was kept
    seconds: float
    val_before: dict[str, float]  # mean absolute error: lengths in Å, angles in degrees
    val_after: dict[str, float]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def describe_refit(refit: dict[str, Any]) -> str:
    """One sentence on a refit (a RefitResult as a dict, as saved in checkpoints), for logs and model cards."""
    before, after, kept = refit["val_before"], refit["val_after"], refit["best_epoch"]
    start = "freshly initialised" if refit.get("init", "trained") == "fresh" else "continued from training"
    return (
        f"Lattice heads refit ({start}) on the frozen encoder's eval-mode latents: {refit['epochs']} epochs in "
        f"{refit['seconds']:.0f} s; validation length error {before['lengths']:.4f} → {after['lengths']:.4f} Å "
        f"(epoch {kept['lengths']} kept), angle error {before['angles']:.3f} → {after['angles']:.3f}° "
        f"(epoch {kept['angles']} kept)"
    )


@torch.no_grad()
def lattice_errors(model: NeSF, z: Tensor, tensors: TensorSet) -> dict[str, float]:
    """Mean absolute errors of the heads: lengths in Å, angles in degrees (the paper's metrics)."""
    lengths, angles = model.lattice_head(z)
    return {
        "lengths": (lengths - tensors.lengths).abs().mean().item(),
        "angles": math.degrees((angles - tensors.angles).abs().mean().item()),
    }


def refit_lattice_heads(
    model: NeSF,
    train: TensorSet,
    val: TensorSet,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
    init: str = "fresh",
) -> RefitResult:
    """Retrain ``model.lattice_head`` in place with its training loss (MSE) on frozen eval-mode latents.

    ``init`` "fresh" starts from new heads (seeded by ``seed``, output bias at the training mean),
    "trained" from the heads as trained; either way the heads as trained stay the epoch-0 candidate.

    The epochs run on one thread: the heads are tiny, so a step is a few small matrix products that two
    threads do not speed up, and with two threads they stall whenever another job holds a core (1,000
    epochs took over 11 minutes beside another job, against about a minute on one thread).
    """
    start = time.monotonic()
    z_train, z_val = encode_all(model, train), encode_all(model, val)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _fit_heads(model, z_train, z_val, train, val, epochs, lr, batch_size, seed, start, init)
    finally:
        torch.set_num_threads(threads)


def _fit_heads(
    model: NeSF,
    z_train: Tensor,
    z_val: Tensor,
    train: TensorSet,
    val: TensorSet,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
    start: float,
    init: str,
) -> RefitResult:
    head = model.lattice_head
    before = lattice_errors(model, z_val, val)
    best = {name: (before[name], copy.deepcopy(getattr(head, name).state_dict()), 0) for name in HEADS}
    if init == "fresh":
        _reinitialise(head, train, seed)
    optimizer = torch.optim.Adam(head.parameters(), lr=lr)
    shuffle = torch.Generator().manual_seed(seed)
    for epoch in range(1, epochs + 1):
        for indices in torch.randperm(len(train), generator=shuffle).to(z_train.device).split(batch_size):
            lengths, angles = head(z_train[indices])
            loss = (lengths - train.lengths[indices]).square().mean() + (angles - train.angles[indices]).square().mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        errors = lattice_errors(model, z_val, val)
        for name in HEADS:
            if errors[name] < best[name][0]:
                best[name] = (errors[name], copy.deepcopy(getattr(head, name).state_dict()), epoch)
    for name in HEADS:
        getattr(head, name).load_state_dict(best[name][1])
    return RefitResult(
        epochs=epochs,
        init=init,
        best_epoch={name: best[name][2] for name in HEADS},
        seconds=time.monotonic() - start,
        val_before=before,
        val_after={name: best[name][0] for name in HEADS},
    )


def _reinitialise(head: torch.nn.Module, train: TensorSet, seed: int) -> None:
    """New head weights (PyTorch's default init, seeded; the global random stream untouched), and each output
    layer's bias at the training mean of what it predicts, so that fitting starts from the mean lattice."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for name in HEADS:
            layers = getattr(head, name)
            for layer in layers:
                if isinstance(layer, torch.nn.Linear):
                    layer.reset_parameters()
            with torch.no_grad():
                layers[-1].bias.copy_(getattr(train, name).mean(0))


@dataclass(frozen=True, kw_only=True)
class RefitOptions:
    """Which run's lattice heads to refit, for how many epochs, at which learning rate, from which heads."""

    run: str = required("nesfgen refit run=RUN_DIR [epochs=300] [lr=3e-4] [init=fresh|trained]")
    epochs: int = 300
    lr: float = TrainConfig.lattice_refit_lr
    init: str = TrainConfig.lattice_refit_init

    def __post_init__(self) -> None:
        require(self.epochs >= 0, "epochs", self.epochs, "0 or more (0: keep the heads as they are)")
        require(self.lr > 0 and math.isfinite(self.lr), "lr", self.lr, "a positive number")
        if self.init not in ("fresh", "trained"):
            raise UserError(f"init={self.init!r}: expected fresh (new heads) or trained (the heads as trained)")
