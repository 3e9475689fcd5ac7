"""Benchmarks that report speed as ratios to the machine's own dense matmul rate, measured in the same run."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nesfgen.config import EstimatorConfig, Recipe
from nesfgen.errors import require
from nesfgen.estimator import estimate
from nesfgen.kernels import bucket_padding
from nesfgen.model import Field, NeSF
from nesfgen.options import required


def matmul_rate(dtype: torch.dtype, device: torch.device, size: int = 2048, seconds: float = 1.0) -> float:
    """Dense square matmul FLOP/s of this machine at ``dtype``: the yardstick for every ratio."""
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    a @ b  # warm-up
    _sync(device)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        count += 1
    _sync(device)
    return count * 2 * size**3 / (time.perf_counter() - start)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


#: seconds of reference matmuls after each timed training step (their median is the train bench's yardstick)
REFERENCE_SECONDS_PER_STEP = 0.2


def field_flops_per_query(field: Field) -> int:
    """Forward matmul FLOPs of one query through a field (the latent's share is per structure, not counted)."""
    layers = [field.first_query, *field.hidden, field.out]
    return 2 * sum(layer.weight.numel() for layer in layers)


def field_training_flops_per_query(field: Field, padded: bool) -> int:
    """Forward + backward matmul FLOPs of one query through a field in training.

    No input gradient for the query's first layer (fed by data), nor, on the padded CPU bf16 path, for the query's
    rows of the hidden layers (QueryConcatLinear leaves them out).
    """
    flops = training_flops(field_flops_per_query(field), [field.first_query])
    if padded:
        flops -= 2 * sum(layer.weight.shape[0] * field.encoding.size for layer in field.hidden)
    return flops


def encoder_flops_per_atom(model: NeSF) -> int:
    encoder = model.encoder
    per_atom = [encoder.position_mlp, encoder.species_mlp, encoder.mix]
    return 2 * sum(m.weight.numel() for block in per_atom for m in block.modules() if isinstance(m, nn.Linear))


def training_flops(forward: int, input_layers: list[nn.Linear]) -> int:
    """Forward + backward matmul FLOPs: 3× the forward, less the input gradient of layers fed by data."""
    return 3 * forward - 2 * sum(layer.weight.numel() for layer in input_layers)


def bench_train(recipe: Recipe, steps: int = 6, warmup: int = 2) -> dict[str, Any]:
    """Time full training steps (sampling, forward, backward, optimizer) of a recipe on its own data."""
    from nesfgen.train import Trainer

    trainer = Trainer(recipe, Path("unused-run-folder"))
    device = trainer.device
    dtype = torch.bfloat16 if recipe.train.precision == "bf16" else torch.float32
    rates = []  # the yardstick, timed after every timed step: on a shared machine its speed drifts
    model, generator = trainer.model, torch.Generator(device).manual_seed(0)
    kl_weight = trainer.objective.kl_weight(trainer.epoch)  # as in the first epoch of training
    model.train()
    with trainer._autocast():  # the fields pad (and so take the padded path) exactly when bucket_padding says
        padded = bucket_padding(1, device) > 0
    pos_flops = field_training_flops_per_query(model.position_field, padded)
    spe_flops = field_training_flops_per_query(model.species_field, padded)
    enc_flops = training_flops(
        encoder_flops_per_atom(model), [model.encoder.position_mlp[0], model.encoder.species_mlp[0]]
    )
    size = recipe.train.batch_size
    totals = {"seconds": 0.0, "queries": 0, "structures": 0, "flops": 0.0}
    timings = {"sample": 0.0, "forward": 0.0, "backward": 0.0, "optimizer": 0.0}
    for step in range(warmup + steps):
        indices = (torch.arange(size) + step * size) % len(trainer.train_set)
        t0 = time.perf_counter()
        atoms = trainer.train_set.batch(indices)
        queries = trainer.sampler.sample(atoms, generator)
        _sync(device)
        t1 = time.perf_counter()
        total, _ = trainer.batch_losses(trainer.objective, atoms, queries, kl_weight=kl_weight)  # a VAE's too
        _sync(device)
        t2 = time.perf_counter()
        trainer.optimizer.zero_grad(set_to_none=True)
        total.backward()
        _sync(device)
        t3 = time.perf_counter()
        trainer.optimizer.step()
        _sync(device)
        t4 = time.perf_counter()
        if step < warmup:
            continue
        rates.append(matmul_rate(dtype, device, seconds=REFERENCE_SECONDS_PER_STEP))
        q, s = queries.position_points.shape[0], queries.species_points.shape[0]
        totals["seconds"] += t4 - t0
        totals["queries"] += q + s
        totals["structures"] += len(indices)
        totals["flops"] += q * pos_flops + s * spe_flops + atoms.cart_coords.shape[0] * enc_flops
        for key, value in zip(timings, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
            timings[key] += value
    seconds = totals["seconds"]
    achieved = totals["flops"] / seconds
    rate = statistics.median(rates)
    return {
        "recipe": recipe.name,
        "device": str(device),
        "precision": recipe.train.precision,
        "batch_size": size,
        "steps": steps,
        "queries_per_second": totals["queries"] / seconds,
        "structures_per_second": totals["structures"] / seconds,
        "seconds_per_step": seconds / steps,
        "step_share": {k: v / seconds for k, v in timings.items()},
        "achieved_gflops": achieved / 1e9,
        "matmul_gflops": rate / 1e9,
        "matmul_gflops_range": (min(rates) / 1e9, max(rates) / 1e9),
        "fraction_of_matmul": achieved / rate,
        "epoch_seconds_estimate": seconds / steps * -(-len(trainer.train_set) // size),
    }


class CountingField:
    """A model's estimator interface that counts the points each field is asked about."""

    def __init__(self, model: NeSF) -> None:
        self.model = model
        self.position_points = 0
        self.species_points = 0

    def lattice(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.lattice(z)

    def position(self, points: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        self.position_points += points.shape[0] * points.shape[1]
        return self.model.position(points, z)

    def species(self, points: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        self.species_points += points.shape[0] * points.shape[1]
        return self.model.species(points, z)


def _timed_decode(
    model: NeSF, z: torch.Tensor, box: Any, species_table: list[int], config: EstimatorConfig
) -> tuple[float, CountingField]:
    """Seconds to decode z with ``config``, and the field calls it made."""
    field = CountingField(model)
    start = time.perf_counter()
    estimate(field, z, box, species_table, config)
    _sync(z.device)
    return time.perf_counter() - start, field


def bench_estimate(
    model: NeSF, z: torch.Tensor, box: Any, species_table: list[int], recipe: Recipe, single: int = 4
) -> dict[str, Any]:
    """Decode ``z`` batched, then ``single`` structures one at a time, then batched with the paper's algorithm.

    The field rate is compared with the matmul rate, the default estimator's time with the paper mode's
    (``speedup_vs_paper``), all measured in this run.
    """
    device = z.device
    config = recipe.estimator
    model.eval()
    rate = matmul_rate(torch.float32, device)
    batched, field = _timed_decode(model, z, box, species_table, config)
    singles = min(single, z.shape[0])
    one_at_a_time = sum(
        _timed_decode(model, z[index : index + 1], box, species_table, config)[0] for index in range(singles)
    )
    paper_seconds, paper_field = _timed_decode(model, z, box, species_table, replace(config, mode="paper"))
    flops = field.position_points * field_flops_per_query(model.position_field)
    flops += field.species_points * field_flops_per_query(model.species_field)
    evaluations = field.position_points + field.species_points
    return {
        "structures": z.shape[0],
        "device": str(device),
        "mode": config.mode,
        "steps": config.steps,
        "seconds": batched,
        "structures_per_second": z.shape[0] / batched,
        "structures_per_second_one_at_a_time": singles / one_at_a_time,
        "batching_speedup": one_at_a_time / singles * z.shape[0] / batched,
        "field_evaluations": evaluations,
        "field_evaluations_per_second": evaluations / batched,
        "achieved_gflops": flops / batched / 1e9,
        "matmul_gflops": rate / 1e9,
        "fraction_of_matmul": flops / batched / rate,
        "paper_seconds": paper_seconds,
        "paper_field_evaluations": paper_field.position_points + paper_field.species_points,
        "speedup_vs_paper": paper_seconds / batched,
    }


@dataclass(frozen=True, kw_only=True)
class BenchEstimateOptions:
    """Whose decoding to time, on the first ``limit`` structures of a split, ``single`` of them one at a time."""

    checkpoint: str = required("checkpoint= is required: the model whose decoding to time")
    data: str = "builtin"
    split: str = "test"
    limit: int = 32
    single: int = 4
    device: str = "cpu"
    estimator: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        require(self.limit >= 1, "limit", self.limit, "at least 1 structure to time")
        # at least one: the one-at-a-time rate divides by their time
        require(1 <= self.single <= self.limit, "single", self.single, f"1 to limit={self.limit}")


def bench_checkpoint(options: BenchEstimateOptions) -> dict[str, Any]:
    """Encode the chosen structures with the checkpoint's model and time their decoding (:func:`bench_estimate`)."""
    from nesfgen.data.names import resolve_dataset
    from nesfgen.decoder import Decoder
    from nesfgen.options import DecodeOptions

    decoder = Decoder.load(
        DecodeOptions(checkpoint=options.checkpoint, device=options.device, estimator=options.estimator)
    )
    trained = decoder.trained
    crystals = resolve_dataset(options.data).load(options.split)
    crystals = crystals.subset(range(min(options.limit, len(crystals))))
    z = decoder.encode(crystals)
    recipe = replace(trained.recipe, estimator=decoder.config)
    return bench_estimate(trained.model, z, trained.box, trained.species_table, recipe, options.single)
