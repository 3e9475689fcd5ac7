from types import SimpleNamespace

import pytest
import torch
from conftest import tiny_recipe

from nesfgen import bench
from nesfgen.bench import (
    bench_estimate,
    bench_train,
    field_flops_per_query,
    field_training_flops_per_query,
    matmul_rate,
    training_flops,
)
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


def test_bench_train_reports_ratios(tiny_dataset):
    result = bench_train(tiny_recipe(tiny_dataset), steps=2, warmup=1)
    assert 0 < result["fraction_of_matmul"] < 2
    assert result["fraction_of_matmul"] == pytest.approx(result["achieved_gflops"] / result["matmul_gflops"])
    assert result["structures_per_second"] == pytest.approx(8 / result["seconds_per_step"])  # batch 8 a step
    assert result["epoch_seconds_estimate"] == pytest.approx(6 * result["seconds_per_step"])  # 48 train, batch 8
    assert abs(sum(result["step_share"].values()) - 1) < 1e-6
    low, high = result["matmul_gflops_range"]  # the yardstick is timed between the steps
    assert low <= result["matmul_gflops"] <= high


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


def test_bench_estimate_reports_batching_speedup(tiny_dataset):
    recipe = tiny_recipe(tiny_dataset, **{"estimator.steps": 2})
    model = NeSF(recipe.model, 3).eval()
    box = [[0, 0, 0], [4, 4, 4]]
    result = bench_estimate(model, torch.zeros(3, recipe.model.latent_size), box, [11, 17, 55], recipe, single=2)
    assert result["structures_per_second"] > 0 and result["batching_speedup"] > 0
    # the speedup is the quotient of the two measured rates, and the FLOP ratio that of the two FLOP rates
    ratio = result["structures_per_second"] / result["structures_per_second_one_at_a_time"]
    assert result["batching_speedup"] == pytest.approx(ratio)
    assert result["fraction_of_matmul"] == pytest.approx(result["achieved_gflops"] / result["matmul_gflops"])


def test_bench_estimate_times_the_default_against_the_paper_mode(tiny_dataset):
    recipe = tiny_recipe(tiny_dataset, **{"estimator.steps": 2})
    model = NeSF(recipe.model, 3).eval()
    box = [[0, 0, 0], [4, 4, 4]]
    result = bench_estimate(model, torch.zeros(3, recipe.model.latent_size), box, [11, 17, 55], recipe, single=1)
    assert result["mode"] == "fast"
    assert result["speedup_vs_paper"] == result["paper_seconds"] / result["seconds"]
    particles = box_grid(box, recipe.estimator.particle_interval).shape[0]
    # the paper mode asks about every box particle at each of its steps + 1 passes (plus the species vote)
    assert result["paper_field_evaluations"] >= 3 * particles * 3


def test_speedup_vs_paper_is_the_paper_time_over_the_default_time(tiny_dataset, monkeypatch):
    recipe = tiny_recipe(tiny_dataset, **{"estimator.steps": 2})
    model = NeSF(recipe.model, 3).eval()
    seconds = {"fast": 0.5, "paper": 4.0}

    def timed(model, z, box, species_table, config):
        return seconds[config.mode], bench.CountingField(model)

    monkeypatch.setattr(bench, "_timed_decode", timed)
    result = bench_estimate(
        model, torch.zeros(2, recipe.model.latent_size), [[0, 0, 0], [1, 1, 1]], [11, 17, 55], recipe
    )
    assert (result["seconds"], result["paper_seconds"], result["speedup_vs_paper"]) == (0.5, 4.0, 8.0)
