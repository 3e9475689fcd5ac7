import json
import math
import os

import numpy as np
import pytest
import torch
from conftest import tiny_recipe

from nesfgen.checkpoint import checkpoint_digest, load_model, read_checkpoint
from nesfgen.crystal import Crystal
from nesfgen.data.store import write_dataset
from nesfgen.errors import UserError
from nesfgen.run_folder import foreign_settings
from nesfgen.sampling import atoms_bounding_box
from nesfgen.train import Trainer, resume, train


def test_short_training_lowers_the_loss(tiny_dataset, tmp_path):
    result = train(tiny_recipe(tiny_dataset, **{"train.epochs": 6, "train.lr": 3e-3}), tmp_path / "run")
    losses = [row["train_total"] for row in result.history]
    assert losses[-1] < losses[0]
    assert (tmp_path / "run" / "losses.png").is_file()
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == list(range(1, 7))


def test_two_epochs_equal_one_plus_resume(tiny_dataset, tmp_path):
    train(tiny_recipe(tiny_dataset), tmp_path / "straight")
    train(tiny_recipe(tiny_dataset, **{"train.epochs": 1}), tmp_path / "split")
    resume(tmp_path / "split", {"train.epochs": "2"})
    a = read_checkpoint(tmp_path / "straight" / "last.pt")["model"]
    b = read_checkpoint(tmp_path / "split" / "last.pt")["model"]
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_checkpoint_rebuilds_model(tiny_dataset, tmp_path):
    train(tiny_recipe(tiny_dataset, **{"train.epochs": 1}), tmp_path / "run")
    trained = load_model(tmp_path / "run")
    assert trained.species_table == tiny_dataset.species_table
    assert trained.box.shape == (2, 3) and np.all(trained.box[1] > trained.box[0])
    z = torch.zeros(2, 16)
    assert trained.model.position(torch.zeros(2, 5, 3), z).shape == (2, 5, 3)


def test_bad_inputs(tiny_dataset, tmp_path):
    with pytest.raises(UserError, match="larger than"):
        train(tiny_recipe(tiny_dataset, **{"train.batch_size": 1000}), tmp_path / "a")
    with pytest.raises(UserError, match="no split"):
        train(tiny_recipe(tiny_dataset, **{"data.val_split": "nope"}), tmp_path / "b")
    train(tiny_recipe(tiny_dataset, **{"train.epochs": 1}), tmp_path / "c")
    with pytest.raises(UserError, match="cannot change"):
        resume(tmp_path / "c", {"model.latent_size": "8"})


def test_killed_run_loses_at_most_the_epoch_in_progress(tiny_dataset, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    from conftest import TINY_MODEL

    run_dir = tmp_path / "killed"
    threads = torch.get_num_threads()  # the same in both runs: training is deterministic given seed and threads
    args = [f"{k}={v}" for k, v in TINY_MODEL.items()] + [f"train.threads={threads}"]
    command = [sys.executable, "-m", "nesfgen", "train", f"data.name={tiny_dataset.path}", "train.batch_size=8"]
    process = subprocess.Popen(
        [*command, "train.epochs=40", *args, f"out={run_dir}", "--json"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (run_dir / "metrics.jsonl").exists():
        time.sleep(0.05)
    time.sleep(0.2)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    done = read_checkpoint(run_dir / "last.pt")["epoch"]
    assert 1 <= done < 40
    resume(run_dir, {"train.epochs": str(done + 1)})
    straight = train(
        tiny_recipe(tiny_dataset, **{"train.epochs": done + 1, "train.threads": threads}), tmp_path / "straight"
    )
    assert straight.epochs_done == done + 1
    a = read_checkpoint(run_dir / "last.pt")["model"]
    b = read_checkpoint(tmp_path / "straight" / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_compiled_fields_train_and_keep_plain_checkpoint_names(tiny_dataset, tmp_path):
    train(tiny_recipe(tiny_dataset, **{"train.epochs": 1, "train.compile": "true"}), tmp_path / "compiled")
    state = read_checkpoint(tmp_path / "compiled" / "last.pt")["model"]
    assert not any("_orig_mod" in key for key in state)
    load_model(tmp_path / "compiled")  # the plain model loads the compiled run's weights


def test_compiled_loss_terms_equal_the_eager_ones(tiny_dataset, tmp_path):
    from nesfgen.train import Trainer, loss_terms

    trainer = Trainer(tiny_recipe(tiny_dataset, **{"train.compile": "true"}), tmp_path / "run")
    atoms = trainer.train_set.batch(torch.arange(8))
    queries = trainer.sampler.sample(atoms, torch.Generator().manual_seed(0))
    trainer.model.train()
    outputs = trainer.model(atoms, queries)  # training layout: the fields' outputs are feature-major views
    compiled, eager = trainer.loss_terms(outputs, atoms, queries), loss_terms(outputs, atoms, queries)
    assert trainer.loss_terms is not loss_terms
    for name in eager:
        assert torch.allclose(compiled[name], eager[name], rtol=1e-5), name


def test_compiled_runs_one_after_another_stay_compiled(tiny_dataset, tmp_path, monkeypatch):
    """Tune trials and cv folds train in one process: no run may inherit the graphs of the ones before."""
    monkeypatch.setattr(torch._dynamo.config, "fail_on_recompile_limit_hit", True)  # instead of going eager
    monkeypatch.setattr(torch._dynamo.config, "recompile_limit", 4)  # one run needs 2 per field
    graphs = torch._dynamo.utils.counters["stats"]  # not cleared by torch._dynamo.reset()
    compiled = []
    for run, latent_size in enumerate([8, 12, 16]):  # as trials do, each run a differently shaped model
        recipe = tiny_recipe(
            tiny_dataset, **{"train.epochs": 1, "train.compile": "true", "model.latent_size": latent_size}
        )
        before = graphs["unique_graphs"]
        train(recipe, tmp_path / f"run{run}")
        compiled.append(graphs["unique_graphs"] - before)
    assert compiled[0] > 0 and compiled == compiled[:1] * 3  # every run compiles its own graphs, none runs eager


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def data_parallel_run(run_dir, processes, arguments):
    import os
    import subprocess
    import sys

    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc_per_node={processes}",
        f"--master_port={free_port()}",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [*command, "-m", "nesfgen", "train", *arguments, "--json"], capture_output=True, text=True, env=env, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count('"run_dir"') == 1  # only rank 0 reports
    return read_checkpoint(run_dir / "last.pt")


def test_two_gloo_processes_match_one_process(tiny_dataset, tmp_path):
    from conftest import TINY_MODEL

    # Without BatchNorm and dropout the only difference left is the order of float additions.
    plain = {"model.batch_norm": "false", "model.field_batch_norm": "false", "model.dropout": "0", "train.epochs": "2"}
    arguments = [f"{k}={v}" for k, v in {**TINY_MODEL, **plain}.items()]
    arguments += [f"data.name={tiny_dataset.path}", "train.batch_size=8", f"out={tmp_path / 'two'}"]
    two = data_parallel_run(tmp_path / "two", 2, arguments)
    one = train(tiny_recipe(tiny_dataset, **plain), tmp_path / "one")
    single = read_checkpoint(tmp_path / "one" / "last.pt")
    assert one.epochs_done == two["epoch"] == 2
    for key, value in single["model"].items():
        assert torch.allclose(value, two["model"][key], atol=1e-4, rtol=1e-3), key
    # resume works the same way under torchrun
    resumed = data_parallel_run(tmp_path / "two", 2, [f"resume={tmp_path / 'two'}", "train.epochs=3"])
    assert resumed["epoch"] == 3


def test_cosine_schedule_anneals_to_its_floor_and_resumes_exactly(tiny_dataset, tmp_path):
    cosine = {"train.lr_schedule": "cosine", "train.lr": 2e-3}
    straight = train(tiny_recipe(tiny_dataset, **cosine, **{"train.epochs": 4}), tmp_path / "straight")
    rates = [row["lr"] for row in straight.history]  # the rate after each epoch's step
    expected = [2e-3 * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * e / 4))) for e in range(1, 5)]
    assert rates == pytest.approx(expected)
    assert rates[-1] == pytest.approx(2e-5)
    train(
        tiny_recipe(tiny_dataset, **cosine, **{"train.epochs": 4, "train.time_limit_minutes": 1e-9}), tmp_path / "cut"
    )
    resume(tmp_path / "cut", {"train.time_limit_minutes": "0"})
    a = read_checkpoint(tmp_path / "straight" / "last.pt")["model"]
    b = read_checkpoint(tmp_path / "cut" / "last.pt")["model"]
    assert all(torch.equal(a[key], b[key]) for key in a)
    with pytest.raises(UserError, match="train.lr_schedule = 'linear' is not allowed; expected one of step, cosine"):
        tiny_recipe(tiny_dataset, **{"train.lr_schedule": "linear"})  # refused when the recipe is loaded


def test_out_folder_with_a_users_files_is_refused_untouched(tiny_dataset, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.toml").write_text("# my own config\n")
    (mine / "metrics.jsonl").write_text("my metrics\n")
    with pytest.raises(UserError, match=r"mine already holds files \(config.toml, metrics.jsonl\) and no run"):
        train(tiny_recipe(tiny_dataset), mine)
    assert (mine / "config.toml").read_text() == "# my own config\n" and sorted(os.listdir(mine)) == [
        "config.toml",
        "metrics.jsonl",
    ]


def test_a_fine_tuned_run_knows_which_checkpoint_it_started_from(tiny_dataset, tmp_path):
    pretrained = train(tiny_recipe(tiny_dataset, **{"train.epochs": 1}), tmp_path / "pre")
    start = tmp_path / "start.pt"
    start.write_bytes((pretrained.run_dir / "last.pt").read_bytes())
    recipe = tiny_recipe(tiny_dataset, **{"train.epochs": 1, "train.init_from": str(start)})
    tuned = train(recipe, tmp_path / "tuned")
    assert read_checkpoint(tuned.run_dir / "last.pt")["init_digest"] == checkpoint_digest(start)
    assert foreign_settings(tuned.run_dir, recipe) == []
    state = torch.load(start, weights_only=True)
    state["epoch"] = 99  # the same name, other bytes: e.g. a newly shipped nesf-lcs6
    torch.save(state, start)
    assert foreign_settings(tuned.run_dir, recipe) == [
        f"train.init_from = {str(start)!r} is another checkpoint than the run started from"
    ]
    state = torch.load(tuned.run_dir / "last.pt", weights_only=True)
    del state["init_digest"]  # a run from before the digest was recorded
    torch.save(state, tuned.run_dir / "last.pt")
    assert "maybe not the checkpoint (unrecorded)" in foreign_settings(tuned.run_dir, recipe)[0]


def test_fine_tuning_keeps_the_species_table_grows_it_and_widens_the_box(tiny_dataset, tmp_path):
    pretrained = train(tiny_recipe(tiny_dataset, **{"train.epochs": 1}), tmp_path / "pre")
    bigger = [
        Crystal.create(
            c.lengths * 1.6, c.angles, atomic_numbers=c.atomic_numbers, frac_coords=c.frac_coords, id=f"big-{c.id}"
        )
        for c in tiny_dataset.load("train")
        if c.id.startswith(("NaCl", "SrTiO3"))
    ]
    other = write_dataset(tmp_path / "other", {"train": bigger[:16], "val": bigger[16:]}, name="other")
    seen = [*bigger[16:], *list(tiny_dataset.load("train"))[:2]]  # two of the start's own training structures
    leaky = write_dataset(tmp_path / "leaky", {"train": bigger[:16], "val": seen}, name="leaky")
    settings = {"train.init_from": str(pretrained.run_dir), "data.test_split": "val"}
    with pytest.raises(UserError, match="trained on other data.*set train.fine_tune=true"):
        Trainer(tiny_recipe(other, **settings), tmp_path / "refused")
    trainer = Trainer(tiny_recipe(other, **settings, **{"train.fine_tune": "true"}), tmp_path / "tuned")
    assert trainer.species_table == tiny_dataset.species_table  # the source's table, a superset of this data's
    source_box = np.asarray(read_checkpoint(pretrained.run_dir / "last.pt")["box"])
    own_box = atoms_bounding_box(other.load("train"))
    assert np.all(trainer.box[0] <= np.minimum(source_box[0], own_box[0]) + 1e-9)
    assert (
        np.all(trainer.box[1] >= np.maximum(source_box[1], own_box[1]) - 1e-9)
        and own_box[1].max() > source_box[1].max()
    )

    with pytest.raises(UserError, match="was trained on 2 structures of 'leaky'.s val split "):
        Trainer(tiny_recipe(leaky, **settings, **{"train.fine_tune": "true"}), tmp_path / "leaked")
    with pytest.raises(UserError, match="train.fine_tune=true needs train.init_from"):
        Trainer(tiny_recipe(other, **{"train.fine_tune": "true", "data.test_split": "val"}), tmp_path / "from-nothing")

    alien = [
        Crystal.create([3.0] * 3, [90] * 3, atomic_numbers=[3, 9], frac_coords=[[0, 0, 0], [0.5] * 3], id=f"LiF-{k}")
        for k in range(20)
    ]
    lif = write_dataset(tmp_path / "lif", {"train": alien[:16], "val": alien[16:]}, name="lif")
    learner = Trainer(tiny_recipe(lif, **settings, **{"train.fine_tune": "true"}), tmp_path / "alien")
    known = len(tiny_dataset.species_table)
    assert learner.species_table == [*tiny_dataset.species_table, 3, 9]  # the known elements keep their indices
    source = read_checkpoint(pretrained.run_dir / "best.pt")["model"]
    weights = learner.model.state_dict()
    assert weights["encoder.species_mlp.0.weight"].shape[1] == weights["species_field.out.bias"].shape[0] == known + 2
    assert torch.equal(weights["encoder.species_mlp.0.weight"][:, :known], source["encoder.species_mlp.0.weight"])
    assert torch.equal(weights["species_field.out.weight"][:known], source["species_field.out.weight"])
    assert torch.equal(weights["species_field.out.bias"][:known], source["species_field.out.bias"])
    tuned = learner.run()
    assert read_checkpoint(tuned.run_dir / "best.pt")["species_table"] == learner.species_table
