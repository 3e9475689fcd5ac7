import torch
from conftest import tiny_recipe

from nesfgen.checkpoint import build_model, read_checkpoint
from nesfgen.model import encode_all
from nesfgen.refit import _reinitialise, lattice_errors, refit_lattice_heads
from nesfgen.sampling import TensorSet
from nesfgen.train import refit_best, resume, train


def tiny_sets(dataset):
    return (TensorSet(dataset.load(split), dataset.species_table) for split in ("train", "val"))


def test_refit_fits_the_heads_and_touches_nothing_else(tiny_dataset):
    recipe = tiny_recipe(tiny_dataset)
    train_set, val_set = tiny_sets(tiny_dataset)
    results = []
    threads = torch.get_num_threads()
    for _ in range(2):
        torch.manual_seed(0)
        model = build_model(recipe.model, len(tiny_dataset.species_table))
        before = {k: v.clone() for k, v in model.state_dict().items()}
        result = refit_lattice_heads(model, train_set, val_set, epochs=40, lr=3e-3, batch_size=8, seed=1)
        results.append(model.state_dict())
        assert torch.get_num_threads() == threads  # the one-thread epochs give the caller its threads back
        # freshly initialised heads are far off: the refit must find much better ones on the validation split
        assert result.val_after["lengths"] < 0.5 * result.val_before["lengths"]
        assert result.val_after["angles"] < result.val_before["angles"]
        assert result.val_after == lattice_errors(model, encode_all(model, val_set), val_set)
        for key, value in model.state_dict().items():
            if not key.startswith("lattice_head."):
                assert torch.equal(value, before[key]), key
    for key in results[0]:  # deterministic for a seed
        assert torch.equal(results[0][key], results[1][key]), key


def test_fresh_heads_start_from_the_mean_lattice_and_never_lose_to_the_heads_as_trained(tiny_dataset):
    recipe = tiny_recipe(tiny_dataset)
    train_set, val_set = tiny_sets(tiny_dataset)
    torch.manual_seed(0)
    model = build_model(recipe.model, len(tiny_dataset.species_table))
    refit_lattice_heads(model, train_set, val_set, epochs=40, lr=3e-3, batch_size=8, seed=1, init="trained")
    fitted = {k: v.clone() for k, v in model.lattice_head.state_dict().items()}
    state = torch.random.get_rng_state()
    # at a vanishing learning rate, new heads stay at the mean lattice: worse than the fitted heads, which stay
    result = refit_lattice_heads(model, train_set, val_set, epochs=1, lr=1e-12, batch_size=8, seed=1, init="fresh")
    assert result.best_epoch == {"lengths": 0, "angles": 0} and result.init == "fresh"
    for key, value in model.lattice_head.state_dict().items():
        assert torch.equal(value, fitted[key]), key
    assert torch.equal(torch.random.get_rng_state(), state)  # the global random stream is untouched
    # new heads start at the training mean
    fresh = build_model(recipe.model, len(tiny_dataset.species_table))
    _reinitialise(fresh.lattice_head, train_set, seed=1)
    assert torch.allclose(fresh.lattice_head.lengths[-1].bias, train_set.lengths.mean(0))
    assert torch.allclose(fresh.lattice_head.angles[-1].bias, train_set.angles.mean(0))


def test_training_refits_best_once_and_keeps_the_checkpoint_as_trained(tiny_dataset, tmp_path):
    run_dir = tmp_path / "run"
    result = train(tiny_recipe(tiny_dataset, **{"train.lattice_refit_epochs": 3}), run_dir)
    assert result.lattice_refit is not None and result.lattice_refit["epochs"] == 3
    refit, trained = read_checkpoint(run_dir / "best.pt"), read_checkpoint(run_dir / "best.before-refit.pt")
    assert "lattice_refit" in refit and "lattice_refit" not in trained
    assert refit["recipe"]["train"]["lattice_refit_epochs"] == 3
    for key, value in trained["model"].items():
        if not key.startswith("lattice_head."):
            assert torch.equal(refit["model"][key], value), key
    assert refit_best(run_dir, 3, 3e-4, again=False) is None  # already refit
    resumed = resume(run_dir, {"train.epochs": "2"})  # nothing left to train: best.pt stays as it is
    assert resumed.lattice_refit is None
    assert torch.equal(
        read_checkpoint(run_dir / "best.pt")["model"]["lattice_head.angles.0.weight"],
        refit["model"]["lattice_head.angles.0.weight"],
    )
