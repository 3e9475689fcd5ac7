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


def test_matmul_rate_is_positive():
    assert matmul_rate(torch.float32, torch.device("cpu"), size=256, seconds=0.05) > 0


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
    assert result["queries_per_second"] > 0 and 0 < result["fraction_of_matmul"] < 2
    assert abs(sum(result["step_share"].values()) - 1) < 1e-6
    low, high = result["matmul_gflops_range"]  # the yardstick is timed between the steps
    assert low <= result["matmul_gflops"] <= high


def test_bench_train_times_a_variational_recipe(tiny_dataset):
    result = bench_train(tiny_recipe(tiny_dataset, **{"model.variational": "true"}), steps=1, warmup=1)
    assert result["queries_per_second"] > 0


def test_bench_estimate_reports_batching_speedup(tiny_dataset):
    recipe = tiny_recipe(tiny_dataset, **{"estimator.steps": 2})
    model = NeSF(recipe.model, 3).eval()
    box = [[0, 0, 0], [4, 4, 4]]
    result = bench_estimate(model, torch.zeros(3, recipe.model.latent_size), box, [11, 17, 55], recipe, single=2)
    assert result["structures_per_second"] > 0 and result["batching_speedup"] > 0


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
