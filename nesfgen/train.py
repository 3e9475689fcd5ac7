"""Training: the loop, validation, early stopping, atomic checkpoints and exact resume.

Each epoch reseeds its own random streams from (seed, epoch), so resuming from the checkpoint of
epoch k replays epochs k+1... exactly as an uninterrupted run would.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch
from torch import Tensor, nn

from nesfgen.checkpoint import build_model, checkpoint_digest, load_weights, read_checkpoint, save_checkpoint
from nesfgen.config import LossConfig, Recipe, TrainConfig, from_dict, to_dict, to_toml
from nesfgen.data.names import resolve_dataset
from nesfgen.data.store import CrystalSet, Dataset
from nesfgen.errors import UserError
from nesfgen.files import atomic_write_text, new_figure, output_folder, save_figure
from nesfgen.machine import machine_description, resolve_device
from nesfgen.model import NeSF, count_parameters
from nesfgen.refit import RefitResult, refit_lattice_heads
from nesfgen.run_folder import RUN_HEADER, check_new_run_dir, check_same_recipe, new_run_dir, run_status
from nesfgen.sampling import Atoms, Queries, QuerySampler, TensorSet, atoms_bounding_box, rank_share, shift_origins

if TYPE_CHECKING:
    from nesfgen.vae import LossTerms, VariationalObjective

log = logging.getLogger(__name__)

LOSS_NAMES = ("position", "species", "length", "angle")
#: keys that may change when a run is resumed (everything else must match the checkpoint)
RESUMABLE_KEYS = (
    "epochs",
    "early_stopping",
    "early_stopping_patience",
    "time_limit_minutes",
    "device",
    "threads",
    "deterministic",
    "lattice_refit_epochs",
    "lattice_refit_lr",
)


class TrainProgress(Protocol):
    """What the training loop reports to a front end (the CLI draws it with rich)."""

    def start(
        self, recipe: Recipe, run_dir: Path, parameters: int, start_epoch: int, batches_per_epoch: int
    ) -> None: ...
    def step(self, epoch: int, batch: int, losses: dict[str, float]) -> None: ...
    def epoch(self, row: dict[str, Any]) -> None: ...


@dataclass
class TrainResult:
    run_dir: Path
    epochs_done: int
    best_epoch: int
    best_val_loss: float
    last_row: dict[str, Any]
    stop_reason: str
    parameters: int
    dataset: str = ""
    seconds: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)
    lattice_refit: dict[str, Any] | None = None


def loss_terms(
    outputs: tuple[Tensor, Tensor, Tensor, Tensor],
    atoms: Atoms,
    queries: Queries,
    totals: tuple[int, int, int] | None = None,
) -> dict[str, Tensor]:
    """The four unweighted loss terms of a batch's training outputs: mean squared errors and cross-entropy.

    ``totals`` = (position queries, species queries, structures) of the whole batch when this process
    holds only a share of it: the terms are then this share's sums divided by those totals, times the
    world size, so that averaging gradients over ranks gives exactly the whole batch's means.
    Also the likelihood terms of the variational model.
    """
    position, species, lengths, angles = outputs
    terms = {
        "position": (
            (position.float() - queries.position_targets).square().sum(),
            3 * queries.position_points.shape[0],
        ),
        "species": (
            nn.functional.cross_entropy(species.float(), queries.species_targets, reduction="sum"),
            queries.species_points.shape[0],
        ),
        "length": ((lengths.float() - atoms.lengths).square().sum(), 3 * atoms.num_structures),
        "angle": ((angles.float() - atoms.angles).square().sum(), 3 * atoms.num_structures),
    }
    if totals is None:
        return {name: total / count for name, (total, count) in terms.items()}
    world = _world_size()
    q, s, b = totals
    denominators = {"position": 3 * q, "species": s, "length": 3 * b, "angle": 3 * b}
    return {name: total * world / denominators[name] for name, (total, _) in terms.items()}


def _world_size() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


@dataclass(frozen=True)
class Ranks:
    """This process's place in a data-parallel run (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_ranks(device: torch.device) -> Ranks:
    """Join the process group torchrun describes in the environment (NCCL on GPUs, Gloo on CPUs)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Ranks()
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Ranks(dist.get_rank(), dist.get_world_size())


def epoch_batches(count: int, batch_size: int, generator: torch.Generator, minimum: int = 2) -> list[Tensor]:
    """A shuffled partition into batches; a trailing batch under ``minimum`` joins the previous one.

    BatchNorm needs two structures per process, so ``minimum`` is twice the number of processes.
    """
    order = torch.randperm(count, generator=generator)
    batches = list(order.split(batch_size))
    if len(batches) > 1 and len(batches[-1]) < minimum:
        batches[-2] = torch.cat([batches[-2], batches.pop()])
    return batches


#: device types with a fused Adam kernel: one kernel for all parameters, a fourth of the time of the default on a CPU
FUSED_ADAM_DEVICES = ("cpu", "cuda")
#: the cosine schedule ends at this fraction of train.lr
COSINE_FINAL_FACTOR = 0.01


def learning_rate_schedule(optimizer: torch.optim.Optimizer, t: TrainConfig) -> torch.optim.lr_scheduler.LRScheduler:
    """Stepped once per epoch. ``step`` is the paper's; ``cosine`` anneals to COSINE_FINAL_FACTOR × lr at
    ``train.epochs``, so a compressed run ends at a low rate instead of stopping mid-plateau."""
    if t.lr_schedule == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=t.lr_decay_every, gamma=t.lr_decay_factor)
    if t.lr_schedule == "cosine":

        def factor(epoch: int) -> float:
            progress = min(epoch, t.epochs) / max(t.epochs, 1)
            return COSINE_FINAL_FACTOR + (1 - COSINE_FINAL_FACTOR) * 0.5 * (1 + math.cos(math.pi * progress))

        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    raise UserError(f"train.lr_schedule must be step or cosine, got {t.lr_schedule!r}")


def _seed(seed: int, epoch: int, stream: int) -> int:
    return (seed * 1_000_003 + epoch * 101 + stream) % (2**63)


#: [model] keys a warm start may change: one adds weights (a VAE's scale head), one acts in training only
FREE_ON_INIT = ("variational", "dropout")


def initialise_from(model: nn.Module, recipe: Recipe, source: dict[str, Any], dataset: Dataset) -> None:
    """Copy a trained checkpoint's weights into a fresh model (e.g. an autoencoder into its VAE).

    The architecture must be the source's, apart from FREE_ON_INIT: every source weight is copied,
    and weights only the new model has (a VAE's scale head, a fine-tuning's new species) keep their
    initialisation. The source must have been trained on this dataset unless ``train.fine_tune`` says otherwise.
    """
    where = f"train.init_from = {recipe.train.init_from!r} ({source['path']})"
    source_recipe = from_dict(Recipe, source["recipe"], where=source["path"])
    theirs = source_recipe.model
    mine = recipe.model
    differing = [
        f"model.{key} = {value!r} there, {getattr(mine, key)!r} here"
        for key, value in vars(theirs).items()
        if key not in FREE_ON_INIT and value != getattr(mine, key)
    ]
    if differing:
        raise UserError(
            f"{where}: its [model] section differs from this recipe's, so its weights do not fit: {'; '.join(differing)}"
        )
    if source["dataset_hash"] != dataset.content_hash and not recipe.train.fine_tune:
        raise UserError(
            f"{where} was trained on other data than dataset {dataset.name!r} "
            f"(content hash {source['dataset_hash'][:12]} != {dataset.content_hash[:12]}); "
            "set train.fine_tune=true to fine-tune it on this data"
        )
    if source["dataset_hash"] != dataset.content_hash:
        check_start_unseen(where, source_recipe, recipe, dataset)
    weights = with_new_species(model, source["model"], len(source["species_table"]))
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if unexpected:
        raise UserError(f"{where}: weights {unexpected[:3]} have no place in this model")
    grew = sum(weights[name] is not source["model"].get(name) for name in weights)
    log.info("initialised from %s; %d tensors fresh, %d grown for new species", source["path"], len(missing), grew)


def check_start_unseen(where: str, source_recipe: Recipe, recipe: Recipe, dataset: Dataset) -> None:
    """Refuse a start trained on structures this run validates or tests on: its figures would be of seen data.

    Structures are matched by id (both datasets from the Materials Project: 112 of ICSG3D's test structures are
    LCS6Å training structures). A start whose training data is not on this machine is not checked, with a warning.
    """
    try:
        seen_data = resolve_dataset(source_recipe.data.dataset_name)
        seen = {crystal.id for crystal in seen_data.load(source_recipe.data.train_split) if crystal.id}
    except UserError as error:
        log.warning("%s: its training data cannot be checked for this run's held-out structures (%s)", where, error)
        return
    held_out = list(dict.fromkeys((recipe.data.val_split, recipe.data.test_split)))  # once when they coincide
    shared = sorted({crystal.id for split in held_out for crystal in dataset.load(split) if crystal.id in seen})
    if shared:
        splits = f"{' and '.join(held_out)} split{'s' if len(held_out) > 1 else ''}"
        raise UserError(
            f"{where} was trained on {len(shared)} structures of {dataset.name!r}'s {splits} "
            f"(e.g. {', '.join(shared[:3])}), so this run would be judged on structures its start has seen; "
            "start from a model trained without them (for the ICSG3D stand-in: a run on lcs6-minus-icsg3d)"
        )


def with_new_species(model: NeSF, weights: dict[str, Tensor], known: int) -> dict[str, Tensor]:
    """``weights`` of a model of ``known`` species, grown to ``model``'s species table.

    A fine-tuning's table is its source's with the new data's other elements appended, so the known species
    keep their indices and weights and the new ones start from ``model``'s fresh initialisation.
    """
    fresh = model.state_dict()
    grown = dict(weights)
    for name, axis in NeSF.SPECIES_AXES.items():
        if name not in weights:
            continue
        trained, wanted = weights[name].shape[axis], fresh[name].shape[axis]
        if trained == known and wanted > known:
            grown[name] = fresh[name].clone()
            grown[name].narrow(axis, 0, known).copy_(weights[name])
    return grown


def load_split(dataset: Dataset, recipe: Recipe, split: str) -> CrystalSet:
    """A split as the recipe trains on it: its first ``data.limit`` structures when a limit is set."""
    crystals = dataset.load(split)
    if recipe.data.limit > 0 and len(crystals) > recipe.data.limit:
        crystals = crystals.subset(range(recipe.data.limit))
    if len(crystals) == 0:
        raise UserError(f"split {split!r} of dataset {dataset.name!r} is empty")
    return crystals


class AutoencoderObjective(nn.Module):
    """The autoencoder's loss as a module, so DDP can wrap it: the weighted sum of the four loss terms.

    VariationalObjective's counterpart: the trainer asks either for its loss names, KL weight and history columns.
    """

    loss_names = LOSS_NAMES

    def __init__(self, model: nn.Module, weights: LossConfig, loss_terms: LossTerms) -> None:
        super().__init__()
        self.model = model
        self.weights = weights
        self.loss_terms = loss_terms

    def kl_weight(self, epoch: int) -> float:
        """No KL term: 0 in every epoch."""
        return 0.0

    def history_columns(self, epoch: int) -> dict[str, float]:
        """Nothing of the objective changes between epochs."""
        return {}

    def forward(
        self,
        atoms: Atoms,
        queries: Queries,
        kl_weight: float = 0.0,
        totals: tuple[int, int, int] | None = None,
        world: int = 1,
    ) -> dict[str, Tensor]:
        """{"total": the weighted sum, then the four unweighted loss terms}. ``kl_weight`` and ``world`` are
        VariationalObjective's; ``loss_terms`` finds the world size itself."""
        terms = self.loss_terms(self.model(atoms, queries), atoms, queries, totals)
        w = self.weights
        total = (
            w.position * terms["position"]
            + w.species * terms["species"]
            + w.length * terms["length"]
            + w.angle * terms["angle"]
        )
        return {"total": total, **terms}


class Trainer:
    """Owns the model, optimizer, data and run folder of one training run."""

    def __init__(self, recipe: Recipe, run_dir: Path, state: dict[str, Any] | None = None) -> None:
        """Set up a run: a fresh one, a warm start from ``train.init_from``, or (``state``) the resumed checkpoint."""
        self.recipe = recipe
        self.run_dir = Path(run_dir)
        t = recipe.train
        if t.fine_tune and not t.init_from and state is None:
            raise UserError(
                "train.fine_tune=true needs train.init_from=RUN (the run, checkpoint or shipped model to fine-tune); "
                "without it the run would start from random weights"
            )
        self._set_up_runtime()
        self.dataset = self._open_dataset(state)
        source = read_checkpoint(t.init_from) if t.init_from and state is None else None
        # the bytes a fine-tuned run started from, so that a later run of the recipe can tell a newer start
        self.init_digest = (state or {}).get("init_digest") or (checkpoint_digest(t.init_from) if source else None)
        self._load_data(state or source)
        torch.manual_seed(t.seed)  # the model's initial weights
        self.model = build_model(recipe.model, len(self.species_table)).to(self.device)
        if source is not None:
            initialise_from(self.model, recipe, source, self.dataset)
        if t.compile:
            self._compile()
        self._build_objective()
        self.optimizer = torch.optim.Adam(
            self.model.parameters(), lr=t.lr, fused=self.device.type in FUSED_ADAM_DEVICES or None
        )
        self.scheduler = learning_rate_schedule(self.optimizer, t)
        self._restore(state)

    def _set_up_runtime(self) -> None:
        """Threads, the device, deterministic kernels and this process's rank."""
        t = self.recipe.train
        if t.threads > 0:
            torch.set_num_threads(t.threads)
        self.device = resolve_device(t.device, "train.device")
        # CUDA has kernels with no deterministic variant: there we only warn.
        torch.use_deterministic_algorithms(t.deterministic, warn_only=self.device.type != "cpu")
        # Filling every new tensor with NaN only catches bugs; it cost 15 % of a training step.
        torch.utils.deterministic.fill_uninitialized_memory = False
        self.ranks = init_ranks(self.device)

    def _open_dataset(self, state: dict[str, Any] | None) -> Dataset:
        """The recipe's dataset, checked to be the one a resumed run started on."""
        dataset = resolve_dataset(self.recipe.data.dataset_name)
        if state is not None and state["dataset_hash"] != dataset.content_hash:
            raise UserError(
                f"dataset {dataset.name!r} at {dataset.path} changed since the run started "
                f"(content hash {dataset.content_hash[:12]} != {state['dataset_hash'][:12]}); cannot resume"
            )
        return dataset

    def _load_data(self, known: dict[str, Any] | None) -> None:
        """The training and validation splits on the device, and the query sampler.

        ``known``: the checkpoint resumed or warm-started from, whose species table and bounding box are kept
        so that its fields keep their meaning. A fine-tuning appends the elements its start lacks to the table
        and widens the box to this data's atoms.
        """
        recipe, t = self.recipe, self.recipe.train
        self.species_table = list((known or {}).get("species_table", self.dataset.species_table))
        unknown = sorted(set(self.dataset.species_table) - set(self.species_table))
        if unknown and t.fine_tune:
            log.info("%s holds elements its start was not trained on: %s, learnt afresh", self.dataset.name, unknown)
            self.species_table += unknown
        elif unknown:  # a warm start from other data, which initialise_from refuses with the remedy
            self.species_table = list(self.dataset.species_table)
        train_crystals = load_split(self.dataset, recipe, recipe.data.train_split)
        val_crystals = load_split(self.dataset, recipe, recipe.data.val_split)
        if t.batch_size < 2 * self.ranks.world:
            raise UserError(
                f"train.batch_size must be at least 2 per process (BatchNorm), got {t.batch_size} for {self.ranks.world}"
            )
        if t.batch_size > len(train_crystals):
            raise UserError(
                f"train.batch_size {t.batch_size} is larger than the {len(train_crystals)} structures of split "
                f"{recipe.data.train_split!r}; lower train.batch_size"
            )
        self.box = atoms_bounding_box(train_crystals)
        if known:
            trained_box = np.asarray(known["box"])
            # a fine-tuned model's fields also cover the new data's atoms (YBCO-like cells outgrow LCS6Å's box)
            widened = np.stack([np.minimum(trained_box[0], self.box[0]), np.maximum(trained_box[1], self.box[1])])
            self.box = widened if t.fine_tune else trained_box
        # what the model saw, so that decoding can warn about inputs far outside it
        self.atoms_per_cell = [int(train_crystals.num_atoms.min()), int(train_crystals.num_atoms.max())]
        self.train_set = TensorSet(train_crystals, self.species_table, self.device)
        self.val_set = TensorSet(val_crystals, self.species_table, self.device)
        self.sampler = QuerySampler(recipe.sampling, self.box, self.device)

    def _compile(self) -> None:
        """Compile the fields and the encoder's per-atom part in place, so parameter names stay the plain model's."""
        # Earlier runs in this process (tune trials, cv folds) compiled the same Field.forward for their own
        # models; their cached graphs count against dynamo's recompile limit, past which this run would
        # silently train in eager mode. This run's fields are the only compiled code that must stay fast.
        torch._dynamo.reset()
        # In place, so parameter names (and so checkpoints) stay those of the plain model.
        self.model.position_field.compile(dynamic=True)
        self.model.species_field.compile(dynamic=True)
        # The encoder's per-atom MLPs: small matmuls among BatchNorm, ReLU and dropout calls, which eager mode
        # ran one by one (1-2 % of a fast-lcs6 step). Compiled as a whole, the encoder trained to NaN losses
        # within three steps; the max-pooling after this part and the head stay eager.
        encoder = self.model.encoder
        encoder.per_atom = torch.compile(encoder.per_atom, dynamic=True)  # an attribute: parameters unchanged

    def _build_objective(self) -> None:
        """What a training step calls: the autoencoder's weighted losses or a VAE's negative ELBO, in DDP across ranks."""
        # Compiled, the cross-entropy reads the species field's feature-major logits where they lie and fuses
        # softmax, loss and gradient: about 3 ms of a fast-lcs6 step
        self.loss_terms = torch.compile(loss_terms, dynamic=True) if self.recipe.train.compile else loss_terms
        self.objective: AutoencoderObjective | VariationalObjective
        if self.recipe.model.variational:
            from nesfgen.vae import VariationalObjective

            self.objective = VariationalObjective(self.model, self.recipe.loss, self.loss_terms)
        else:
            self.objective = AutoencoderObjective(self.model, self.recipe.loss, self.loss_terms)
        self.parallel: nn.Module = self.objective
        if self.ranks.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            self.parallel = DistributedDataParallel(self.objective)  # averages gradients over ranks

    def _restore(self, state: dict[str, Any] | None) -> None:
        """The progress of a fresh run, or the weights, optimizer, schedule and history of the resumed one."""
        self.history: list[dict[str, Any]] = []
        self.epoch = 0
        self.best_val = math.inf
        self.best_epoch = -1
        self.seconds = 0.0
        if state is None:
            return
        load_weights(self.model, state["model"], state["path"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.history = list(state["history"])
        self.epoch = int(state["epoch"])
        self.best_val = float(state["best_val_loss"])
        self.best_epoch = int(state["best_epoch"])
        self.seconds = float(state["seconds"])

    def _autocast(self) -> Any:
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.recipe.train.precision == "bf16")

    def train_epoch(self, progress: TrainProgress | None) -> dict[str, float]:
        t = self.recipe.train
        self.model.train()
        torch.manual_seed(_seed(t.seed, self.epoch, 0))  # dropout
        shuffle = torch.Generator().manual_seed(_seed(t.seed, self.epoch, 1))
        noise = torch.Generator(self.device).manual_seed(_seed(t.seed, self.epoch, 2))
        sums = dict.fromkeys(("total", *self.objective.loss_names), 0.0)
        batches = epoch_batches(len(self.train_set), t.batch_size, shuffle, 2 * self.ranks.world)
        kl_weight = self.objective.kl_weight(self.epoch)
        for index, indices in enumerate(batches):
            atoms = self.train_set.batch(indices)
            if self.recipe.sampling.origin_shift:
                atoms = shift_origins(atoms, noise)
            queries = self.sampler.sample(atoms, noise)
            totals = None
            if self.ranks.world > 1:
                totals = (queries.position_points.shape[0], queries.species_points.shape[0], atoms.num_structures)
                atoms, queries = rank_share(atoms, queries, self.ranks.rank, self.ranks.world)
            total, losses = self.batch_losses(self.parallel, atoms, queries, totals, kl_weight)
            self.optimizer.zero_grad(set_to_none=True)
            total.backward()
            self.optimizer.step()
            values = self._global_values(total, losses)
            for key, value in values.items():
                sums[key] += value
            if progress and self.ranks.main:
                progress.step(self.epoch, index, values)
        return {key: value / len(batches) for key, value in sums.items()}

    def batch_losses(
        self,
        module: nn.Module,
        atoms: Atoms,
        queries: Queries,
        totals: tuple[int, int, int] | None = None,
        kl_weight: float = 0.0,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """The loss to minimise and its parts, from the objective ``module`` (or its DDP wrapper)."""
        with self._autocast():
            losses = module(atoms, queries, kl_weight, totals, self.ranks.world)
        return losses.pop("total"), losses

    def _global_values(self, total: Tensor, losses: dict[str, Tensor]) -> dict[str, float]:
        """The batch's losses as floats; across ranks, the mean of the ranks' scaled shares."""
        stacked = torch.stack([total.detach(), *(v.detach() for v in losses.values())]).float()
        if self.ranks.world > 1:
            import torch.distributed as dist

            dist.all_reduce(stacked)
            stacked /= self.ranks.world
        return dict(zip(("total", *losses), stacked.tolist()))

    @torch.no_grad()
    def validation_losses(self) -> dict[str, float]:
        """Losses on the validation split with fixed query noise, so epochs compare fairly."""
        self.model.eval()
        noise = torch.Generator(self.device).manual_seed(_seed(self.recipe.train.seed, -1, 3))
        torch.manual_seed(_seed(self.recipe.train.seed, -1, 4))  # a VAE's latent samples
        sums = dict.fromkeys(("total", *self.objective.loss_names), 0.0)
        order = torch.arange(len(self.val_set))
        batches = order.split(self.recipe.train.batch_size)
        for indices in batches:
            atoms = self.val_set.batch(indices)
            queries = self.sampler.sample(atoms, noise)
            # the full KL weight, so that validation losses compare across a warm-up
            total, losses = self.batch_losses(self.objective, atoms, queries, kl_weight=self.recipe.loss.kl)
            weight = len(indices) / len(self.val_set)
            sums["total"] += total.item() * weight
            for key, value in losses.items():
                sums[key] += value.item() * weight
        return sums

    def state(self) -> dict[str, Any]:
        return {
            "recipe": to_dict(self.recipe),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "epoch": self.epoch,
            "history": self.history,
            "best_val_loss": self.best_val,
            "best_epoch": self.best_epoch,
            "seconds": self.seconds,
            "species_table": self.species_table,
            "box": self.box.tolist(),
            "atoms_per_cell": self.atoms_per_cell,
            "dataset_hash": self.dataset.content_hash,
            "dataset_name": self.dataset.name,
            "parameters": count_parameters(self.model),
        } | ({"init_digest": self.init_digest} if self.init_digest else {})

    def _agreed_stop(self, stop: bool) -> bool:
        """Rank 0's decision, so that every rank leaves the loop after the same epoch."""
        if self.ranks.world == 1:
            return stop
        import torch.distributed as dist

        flag = torch.tensor([int(stop)], device=self.device)
        dist.broadcast(flag, 0)
        return bool(flag.item())

    def _snapshot_due(self, every_minutes: float) -> bool:
        """True when this epoch crossed a multiple of the snapshot interval of training time."""
        previous = self.history[-2]["seconds"] if len(self.history) > 1 else 0.0
        return int(self.seconds // (60 * every_minutes)) > int(previous // (60 * every_minutes))

    def run(self, progress: TrainProgress | None = None) -> TrainResult:
        """Train to ``train.epochs``, early stopping or the time limit; then refit the lattice heads if asked."""
        t = self.recipe.train
        if self.ranks.main:
            self._write_run_files()
        batches = len(epoch_batches(len(self.train_set), t.batch_size, torch.Generator().manual_seed(0)))
        if progress and self.ranks.main:
            progress.start(self.recipe, self.run_dir, count_parameters(self.model), self.epoch, batches)
        started = time.monotonic() - self.seconds
        stop_reason = ""
        since_best = self.epoch - 1 - self.best_epoch if self.best_epoch >= 0 else 0
        self._plotted_at = time.monotonic()
        while self.epoch < t.epochs:
            row = self._train_and_validate(progress, started)
            improved = row["val_total"] < self.best_val or not t.early_stopping
            if improved:
                self.best_val, self.best_epoch, since_best = row["val_total"], self.epoch, 0
            else:
                since_best += 1
            self.epoch += 1
            if self.ranks.main:
                self._save_epoch(row, improved, progress)
            stop_reason = self._stop_reason(since_best)
            if self._agreed_stop(bool(stop_reason)):
                break
        return self._finish(stop_reason or "epochs")

    def _write_run_files(self) -> None:
        """config.toml, the recipe as resolved; machine.json, where the run started (for its model card)."""
        output_folder(self.run_dir, "run folder")
        header = f"{RUN_HEADER}{self.run_dir / 'config.toml'}"
        atomic_write_text(self.run_dir / "config.toml", to_toml(self.recipe, header=header))
        if not (self.run_dir / "machine.json").exists():
            atomic_write_text(self.run_dir / "machine.json", json.dumps(machine_description(), indent=1))

    def _train_and_validate(self, progress: TrainProgress | None, started: float) -> dict[str, Any]:
        """One epoch of training, its validation losses and learning-rate step: its history row, appended."""
        epoch_start = time.monotonic()
        train_losses = self.train_epoch(progress)
        val_losses = self.validation_losses()
        self.scheduler.step()
        self.seconds = time.monotonic() - started
        row = {
            "epoch": self.epoch + 1,
            "seconds": round(self.seconds, 2),
            "epoch_seconds": round(time.monotonic() - epoch_start, 2),
            "lr": self.optimizer.param_groups[0]["lr"],
            **self.objective.history_columns(self.epoch),
            **{f"train_{k}": v for k, v in train_losses.items()},
            **{f"val_{k}": v for k, v in val_losses.items()},
        }
        self.history.append(row)
        return row

    def _save_epoch(self, row: dict[str, Any], improved: bool, progress: TrainProgress | None) -> None:
        """last.pt, best.pt when improved, a snapshot when due, metrics.jsonl, and losses.png every 30 s."""
        t = self.recipe.train
        state = self.state()
        save_checkpoint(self.run_dir / "last.pt", state)
        if improved:
            save_checkpoint(self.run_dir / "best.pt", state)
        if t.snapshot_every_minutes > 0 and self._snapshot_due(t.snapshot_every_minutes):
            save_checkpoint(self.run_dir / "snapshots" / f"epoch-{self.epoch:05d}.pt", state)
        write_history(self.run_dir, self.history)
        if time.monotonic() - self._plotted_at > 30:
            plot_losses(self.run_dir, self.history)
            self._plotted_at = time.monotonic()
        if progress:
            progress.epoch(row)

    def _stop_reason(self, since_best: int) -> str:
        """Why training stops after this epoch ("" to go on): early stopping's patience, or the time limit."""
        t = self.recipe.train
        reason = ""
        if t.early_stopping and t.early_stopping_patience > 0 and since_best >= t.early_stopping_patience:
            reason = f"early stopping: no validation improvement for {since_best} epochs"
        if t.time_limit_minutes > 0 and self.seconds >= 60 * t.time_limit_minutes:
            reason = f"time limit of {t.time_limit_minutes} min reached"
        return reason

    def _finish(self, stop_reason: str) -> TrainResult:
        """The final loss plot and the lattice refit of best.pt (rank 0), and the run's result."""
        t = self.recipe.train
        refit = None
        if self.ranks.main:
            plot_losses(self.run_dir, self.history)
            if t.lattice_refit_epochs > 0 and (self.run_dir / "best.pt").is_file():
                refit = refit_best(
                    self.run_dir, t.lattice_refit_epochs, t.lattice_refit_lr, again=False, init=t.lattice_refit_init
                )
        return TrainResult(
            run_dir=self.run_dir,
            epochs_done=self.epoch,
            best_epoch=self.best_epoch + 1,
            best_val_loss=self.best_val,
            last_row=self.history[-1] if self.history else {},
            stop_reason=stop_reason,
            parameters=count_parameters(self.model),
            dataset=self.recipe.data.dataset_name,
            seconds=self.seconds,
            history=self.history,
            lattice_refit=refit.as_dict() if refit else None,
        )


def train(recipe: Recipe, run_dir: Path | None = None, progress: TrainProgress | None = None) -> TrainResult:
    """Train a fresh model from a recipe into ``run_dir`` (a new folder under ``runs/`` by default)."""
    run_dir = Path(run_dir) if run_dir else new_run_dir(recipe.name)
    check_new_run_dir(run_dir)
    return Trainer(recipe, run_dir).run(progress)


def resume(
    run_dir: Path, overrides: dict[str, str] | None = None, progress: TrainProgress | None = None
) -> TrainResult:
    """Continue a run from its ``last.pt`` exactly where it stopped; only ``train.`` keys in RESUMABLE_KEYS may change."""
    from nesfgen.config import apply_overrides

    run_dir = Path(run_dir)
    output_folder(run_dir, "run folder", create=False)
    if not run_dir.is_dir():
        raise UserError(f"cannot resume {run_dir}: no such run folder")
    if not (run_dir / "last.pt").is_file():
        raise UserError(f"cannot resume {run_dir}: no last.pt in it")
    state = read_checkpoint(run_dir / "last.pt")
    recipe = from_dict(Recipe, state["recipe"], where=str(run_dir / "last.pt"))
    for key in overrides or {}:
        if not (key.startswith("train.") and key.split(".", 1)[1] in RESUMABLE_KEYS):
            allowed = ", ".join(f"train.{k}" for k in RESUMABLE_KEYS)
            raise UserError(f"cannot change {key} when resuming; only {allowed} may change")
    recipe = apply_overrides(recipe, overrides or {})
    return Trainer(recipe, run_dir, state).run(progress)


def refit_best(run_dir: Path, epochs: int, lr: float, again: bool = True, init: str = "fresh") -> RefitResult | None:
    """Refit the lattice heads of ``run_dir/best.pt`` on eval-mode latents and write them into it.

    A refit of a checkpoint as trained keeps it in ``best.before-refit.pt``. With ``again=False``
    (the end of a training run) a best.pt that is already refit is left alone and None returned.
    """
    path = Path(run_dir) / "best.pt"
    if not path.is_file():
        raise UserError(f"{run_dir} holds no best.pt to refit")
    state = read_checkpoint(path)
    state.pop("path")
    if "lattice_refit" in state and not again:
        return None
    if epochs < 1:
        raise UserError(f"the lattice refit needs at least 1 epoch, got epochs={epochs}")
    recipe = from_dict(Recipe, state["recipe"], where=str(path))
    dataset = resolve_dataset(recipe.data.dataset_name)
    if state["dataset_hash"] != dataset.content_hash:
        raise UserError(
            f"dataset {dataset.name!r} at {dataset.path} changed since {path} was trained "
            f"(content hash {dataset.content_hash[:12]} != {state['dataset_hash'][:12]}); cannot refit"
        )
    model = build_model(recipe.model, len(state["species_table"]))
    load_weights(model, state["model"], path)
    species = state["species_table"]
    result = refit_lattice_heads(
        model,
        TensorSet(load_split(dataset, recipe, recipe.data.train_split), species),
        TensorSet(load_split(dataset, recipe, recipe.data.val_split), species),
        epochs,
        lr,
        recipe.train.batch_size,
        recipe.train.seed,
        init,
    )
    if "lattice_refit" not in state:  # as trained: keep it (a refit of a refit keeps the first backup)
        save_checkpoint(path.with_name("best.before-refit.pt"), state)
    # the saved recipe says how this model was made: training with it ends in this same refit
    train_section = {**state["recipe"]["train"], "lattice_refit_epochs": epochs, "lattice_refit_lr": lr}
    train_section["lattice_refit_init"] = init
    refit_state = {**state, "recipe": {**state["recipe"], "train": train_section}, "model": model.state_dict()}
    save_checkpoint(path, {**refit_state, "lattice_refit": {**result.as_dict(), "lr": lr}})
    log.info("lattice heads refit: kept epochs %s of %d", result.best_epoch, epochs)
    return result


def write_history(run_dir: Path, history: list[dict[str, Any]]) -> None:
    """Per-epoch metrics as JSON lines, rewritten from the checkpoint's history (never duplicated on resume)."""
    atomic_write_text(run_dir / "metrics.jsonl", "".join(json.dumps(row) + "\n" for row in history))


def plot_losses(run_dir: Path, history: list[dict[str, Any]]) -> None:
    """losses.png: training and validation curves of each loss term."""
    if not history:
        return
    epochs = [row["epoch"] for row in history]
    names = ("total", *LOSS_NAMES, *(("kl",) if "train_kl" in history[-1] else ()))  # kl: a VAE's
    figure, axes = new_figure(len(names), 4 * len(names), 3.6)
    for axis, name in zip(axes, names):
        axis.plot(epochs, [row[f"train_{name}"] for row in history], label="train")
        axis.plot(epochs, [row[f"val_{name}"] for row in history], label="validation")
        axis.set_yscale("log")
        axis.set_title(name)
        axis.set_xlabel("epoch")
    axes[0].legend()
    save_figure(figure, run_dir / "losses.png")


def train_or_resume(recipe: Recipe, run_dir: Path, progress: TrainProgress | None = None) -> None:
    """Bring a run of ``recipe`` in ``run_dir`` to the recipe's epochs: nothing if there, resume if started, else train."""
    check_same_recipe(run_dir, recipe)
    if run_status(run_dir, recipe.train.epochs).finished:
        return
    if (run_dir / "last.pt").is_file():
        resume(run_dir, {"train.epochs": str(recipe.train.epochs)}, progress)
    else:
        train(recipe, run_dir, progress)
