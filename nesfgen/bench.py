"""Benchmarks that report speed as ratios to the machine's own dense matmul rate, measured in the same run."""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nesfgen.config import Recipe
from nesfgen.estimator import estimate
from nesfgen.model import Field, NeSF, bucket_padding


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
    kl_weight = trainer.kl_weight(trainer.epoch)  # as in the first epoch of training
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


def bench_estimate(
    model: NeSF, z: torch.Tensor, box: Any, species_table: list[int], recipe: Recipe, single: int = 4
) -> dict[str, Any]:
    """Decode ``z`` batched and ``single`` structures one at a time; field rate against the matmul rate."""
    device = z.device
    config = recipe.estimator
    rate = matmul_rate(torch.float32, device)
    from nesfgen.sampling import box_grid, local_offsets

    particles = box_grid(box, config.particle_interval, "estimator.particle_interval").shape[0]
    species_points = local_offsets(config.species_interval, config.species_range).shape[0]
    start = time.perf_counter()
    decoded = estimate(model, z, box, species_table, config)
    _sync(device)
    batched = time.perf_counter() - start
    start = time.perf_counter()
    for index in range(min(single, z.shape[0])):
        estimate(model, z[index : index + 1], box, species_table, config)
    _sync(device)
    one_at_a_time = (time.perf_counter() - start) / min(single, z.shape[0])
    atoms = sum(d.num_atoms for d in decoded)
    evaluations = z.shape[0] * particles * (config.steps + 1)
    flops = evaluations * field_flops_per_query(model.position_field) + atoms * species_points * field_flops_per_query(
        model.species_field
    )
    return {
        "structures": z.shape[0],
        "device": str(device),
        "particles_per_structure": particles,
        "steps": config.steps,
        "structures_per_second": z.shape[0] / batched,
        "structures_per_second_one_at_a_time": 1 / one_at_a_time,
        "batching_speedup": one_at_a_time * z.shape[0] / batched,
        "field_evaluations_per_second": (evaluations + atoms * species_points) / batched,
        "achieved_gflops": flops / batched / 1e9,
        "matmul_gflops": rate / 1e9,
        "fraction_of_matmul": flops / batched / rate,
    }
