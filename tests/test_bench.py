"""Benchmarks at tiny size: given known seconds, the rates and ratios reported are theirs; compared decoders agree."""

import itertools
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import TINY_MODEL, tiny_recipe

from nesfgen import bench
from nesfgen.bench import (
    BenchEstimateOptions,
    bench_estimate,
    bench_train,
    encoder_flops_per_atom,
    field_flops_per_query,
    field_training_flops_per_query,
    matmul_rate,
    training_flops,
)
from nesfgen.config import load_recipe
from nesfgen.errors import UserError
from nesfgen.estimator import ExactField, estimate
from nesfgen.model import NeSF
from nesfgen.sampling import box_grid


def test_matmul_rate_counts_two_flops_per_multiply_add(monkeypatch):
    ticks = iter(range(100))  # a clock that advances 1 s per reading
    monkeypatch.setattr(bench, "time", SimpleNamespace(perf_counter=lambda: float(next(ticks))))
    # start 0; readings 1 and 2 are under 2.5 s, so two timed matmuls; 3 ends the loop; the end is read at 4
    assert matmul_rate(torch.float32, torch.device("cpu"), size=8, seconds=2.5) == 2 * 2 * 8**3 / 4


def test_field_flops_count_every_query_layer():
    from nesfgen.config import ModelConfig

    model = NeSF(ModelConfig(), 10)
    # (3→256) + (259→128) + 6×(131→128) + (131→3), times 2 FLOPs per multiply-add
    assert field_flops_per_query(model.position_field) == 2 * (3 * 256 + 259 * 128 + 6 * 131 * 128 + 131 * 3)
    # training: forward, weight gradient and input gradient, except the query's own input gradient
    forward = field_flops_per_query(model.position_field)
    assert training_flops(forward, [model.position_field.first_query]) == 3 * forward - 2 * 3 * 256
    assert field_training_flops_per_query(model.position_field, padded=False) == 3 * forward - 2 * 3 * 256
    # padded CPU bf16: no input gradient for the query's 3 rows of the 7 hidden layers either
    padded = field_training_flops_per_query(model.position_field, padded=True)
    assert padded == 3 * forward - 2 * 3 * 256 - 2 * 7 * 3 * 128


def test_bench_train_reports_the_rates_of_known_step_times(tiny_dataset, monkeypatch):
    from nesfgen.train import Trainer

    # a clock by which every step samples for 1 s, runs forward 2 s, backward 3 s and the optimizer 4 s,
    # with 100 untimed seconds (the yardstick's) between steps
    now = itertools.accumulate(itertools.cycle([100.0, 1.0, 2.0, 3.0, 4.0]))
    monkeypatch.setattr(bench, "time", SimpleNamespace(perf_counter=lambda: next(now)))
    rates = iter([1e9, 3e9, 2e9])  # the yardstick, timed after each of the three timed steps
    monkeypatch.setattr(bench, "matmul_rate", lambda *args, **kwargs: next(rates))
    batches = []  # per step: structures, position and species queries, atoms, and the model
    batch_losses = Trainer.batch_losses

    def spy(self, module, atoms, queries, totals=None, kl_weight=0.0):
        counts = (atoms.num_structures, len(queries.position_points), len(queries.species_points), len(atoms.species))
        batches.append((*counts, self.model))
        return batch_losses(self, module, atoms, queries, totals, kl_weight)

    monkeypatch.setattr(Trainer, "batch_losses", spy)
    result = bench_train(tiny_recipe(tiny_dataset), steps=3, warmup=1)

    timed = batches[1:]  # after the warm-up step
    assert len(timed) == result["steps"] == 3 and [b[0] for b in timed] == [8] * 3 == [result["batch_size"]] * 3
    model = timed[0][-1]
    per_query = [field_training_flops_per_query(f, padded=False) for f in (model.position_field, model.species_field)]
    per_atom = training_flops(
        encoder_flops_per_atom(model), [model.encoder.position_mlp[0], model.encoder.species_mlp[0]]
    )
    flops = sum(q * per_query[0] + s * per_query[1] + a * per_atom for _, q, s, a, _ in timed)
    assert result["seconds_per_step"] == 10.0
    assert result["step_share"] == pytest.approx({"sample": 0.1, "forward": 0.2, "backward": 0.3, "optimizer": 0.4})
    assert result["structures_per_second"] == pytest.approx(24 / 30)
    assert result["queries_per_second"] == pytest.approx(sum(q + s for _, q, s, _, _ in timed) / 30)
    assert result["achieved_gflops"] == pytest.approx(flops / 30 / 1e9)
    assert (result["matmul_gflops"], result["matmul_gflops_range"]) == (2.0, (1.0, 3.0))  # the median, the range
    assert result["fraction_of_matmul"] == pytest.approx(flops / 30 / 2e9)
    assert result["epoch_seconds_estimate"] == 60.0  # 48 training structures: 6 steps of 8


def test_bench_train_times_a_variational_recipe(tiny_dataset, monkeypatch):
    from nesfgen.train import LOSS_NAMES, Trainer
    from nesfgen.vae import VariationalObjective

    timed = []
    batch_losses = Trainer.batch_losses

    def spy(self, module, atoms, queries, totals=None, kl_weight=0.0):
        total, losses = batch_losses(self, module, atoms, queries, totals, kl_weight)
        timed.append((type(module), kl_weight, set(losses)))
        return total, losses

    monkeypatch.setattr(Trainer, "batch_losses", spy)
    recipe = tiny_recipe(tiny_dataset, **{"model.variational": "true", "loss.kl": 0.01, "loss.kl_warmup_epochs": 4})
    bench_train(recipe, steps=1, warmup=1)
    # every step through the negative ELBO, at the first training epoch's warm-up weight
    assert timed == [(VariationalObjective, pytest.approx(0.01 / 4), {*LOSS_NAMES, "kl"})] * 2


def test_bench_estimate_reports_the_ratios_of_known_decode_times(monkeypatch):
    recipe = load_recipe("quickstart", TINY_MODEL)
    model = NeSF(recipe.model, 3).eval()
    calls = []
    # Decoding all three takes 0.5 s, 100 position and 20 species points each; structure i alone takes
    # 0.2, 0.3 or 1.0 s; the paper mode takes 4 s for 1200 points.
    alone = {0: 0.2, 1: 0.3, 2: 1.0}

    def timed(model, z, box, species_table, config):
        calls.append((config.mode, z[:, 0].tolist()))
        field = bench.CountingField(model)
        if config.mode == "paper":
            field.position_points, field.species_points = 1000, 200
            return 4.0, field
        field.position_points, field.species_points = 100 * len(z), 20 * len(z)
        return (0.5 if len(z) == 3 else alone[int(z[0, 0])]), field

    monkeypatch.setattr(bench, "_timed_decode", timed)
    monkeypatch.setattr(bench, "matmul_rate", lambda *args, **kwargs: 2e9)
    z = torch.arange(3.0)[:, None].expand(3, recipe.model.latent_size)  # structure i's latent is all i
    result = bench_estimate(model, z, [[0, 0, 0], [1, 1, 1]], [11, 17, 55], recipe, single=2)

    assert calls == [("fast", [0.0, 1.0, 2.0]), ("fast", [0.0]), ("fast", [1.0]), ("paper", [0.0, 1.0, 2.0])]
    assert (result["structures"], result["mode"], result["seconds"]) == (3, "fast", 0.5)
    assert result["structures_per_second"] == 6.0
    assert result["structures_per_second_one_at_a_time"] == pytest.approx(4.0)  # the first 2 in 0.2 + 0.3 s
    assert result["batching_speedup"] == pytest.approx(1.5)
    assert (result["field_evaluations"], result["field_evaluations_per_second"]) == (360, 720.0)
    flops = 300 * field_flops_per_query(model.position_field) + 60 * field_flops_per_query(model.species_field)
    assert result["achieved_gflops"] == pytest.approx(flops / 0.5 / 1e9)
    assert result["matmul_gflops"] == 2.0 and result["fraction_of_matmul"] == pytest.approx(flops / 0.5 / 2e9)
    assert (result["paper_seconds"], result["paper_field_evaluations"], result["speedup_vs_paper"]) == (4.0, 1200, 8.0)


def atoms_of(crystal) -> np.ndarray:
    """(M, 4) atomic number and position of each atom, sorted: the estimator lists atoms in an order of its own."""
    rows = np.column_stack([crystal.atomic_numbers, np.round(crystal.cart_coords, 3)])
    return rows[np.lexsort(rows.T[::-1])]


def test_the_decoders_bench_estimate_compares_find_the_same_crystals(tiny_crystals, monkeypatch):
    """A speed-up means something only if the faster decoder finds what the slower one does.

    Here the fields are the exact fields of the tiny crystals (a NeSF of the tiny size is kept for its
    layer sizes, which the FLOP counts read), so every decoder should find the crystals themselves.
    """
    crystals = list(tiny_crystals.values())
    table = sorted({int(number) for c in crystals for number in c.atomic_numbers})
    exact = ExactField(crystals, table)
    recipe = load_recipe("quickstart", {**TINY_MODEL, "estimator.steps": "4"})
    model = NeSF(recipe.model, len(table)).eval()
    asked = []  # field points asked, per decoding

    def counted(method):
        def ask(points, z):
            asked[-1] += points.shape[0] * points.shape[1]
            return method(points, z)

        return ask

    model.lattice, model.position, model.species = exact.lattice, counted(exact.position), counted(exact.species)
    decodings = []

    def spy(field, z, box, species_table, config):
        asked.append(0)
        found = estimate(field, z, box, species_table, config)
        decodings.append((config.mode, z[:, 0].tolist(), found))
        return found

    monkeypatch.setattr(bench, "estimate", spy)
    monkeypatch.setattr(bench, "matmul_rate", lambda *args, **kwargs: 1e9)
    coords = np.concatenate([c.cart_coords for c in crystals])
    box = np.stack([coords.min(axis=0), coords.max(axis=0)])
    result = bench_estimate(model, exact.latents(), box, table, recipe, single=2)

    everyone = [float(i) for i in range(len(crystals))]
    assert [d[:2] for d in decodings] == [("fast", everyone), ("fast", [0.0]), ("fast", [1.0]), ("paper", everyone)]
    batched, first, second, paper = (d[2] for d in decodings)
    for found in (batched, paper, first + second):
        for crystal, decoded in zip(crystals, found):
            np.testing.assert_allclose(decoded.lengths, crystal.lengths, atol=1e-5)
            np.testing.assert_allclose(decoded.angles, crystal.angles, atol=1e-4)
            np.testing.assert_allclose(atoms_of(decoded), atoms_of(crystal), atol=2e-3)
    assert result["structures"] == len(crystals)
    assert (result["field_evaluations"], result["paper_field_evaluations"]) == (asked[0], asked[-1])
    # the paper mode asks about every box particle at each of its steps + 1 passes (plus the species vote)
    assert asked[-1] >= len(crystals) * box_grid(box, recipe.estimator.particle_interval).shape[0] * 5


def test_one_at_a_time_needs_a_structure_to_time():
    with pytest.raises(UserError, match="single=0: expected 1 to limit=32"):
        BenchEstimateOptions(checkpoint="run", single=0)
