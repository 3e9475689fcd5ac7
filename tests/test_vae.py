import pyro
import pytest
import torch
from conftest import TINY_MODEL, tiny_recipe
from pyro import poutine
from pyro.poutine.util import site_is_subsample

from nesfgen.checkpoint import load_model, read_checkpoint
from nesfgen.config import LossConfig, load_recipe
from nesfgen.errors import UserError
from nesfgen.evaluate import EvaluateOptions, evaluate
from nesfgen.sampling import QuerySampler, TensorSet, atoms_bounding_box
from nesfgen.train import Trainer, loss_terms, resume, train
from nesfgen.vae import (
    FIELD_LIKELIHOOD,
    LATENT,
    LATTICE_LIKELIHOOD,
    MODULE,
    STRUCTURES,
    VariationalNeSF,
    VariationalObjective,
    kl_weight,
)


def vae_recipe(dataset, **extra):
    return tiny_recipe(dataset, **{"model.variational": "true", **extra})


def tiny_batch(dataset, recipe, size=8):
    """A VariationalNeSF and one batch of atoms and training queries of the tiny dataset."""
    crystals = dataset.load("train")
    tensors = TensorSet(crystals, dataset.species_table)
    atoms = tensors.batch(torch.arange(size))
    sampler = QuerySampler(recipe.sampling, atoms_bounding_box(crystals), "cpu")
    queries = sampler.sample(atoms, torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    return VariationalNeSF(recipe.model, len(dataset.species_table)), atoms, queries


def test_model_and_guide_share_the_latent_site(tiny_dataset):
    recipe = vae_recipe(tiny_dataset)
    vae, atoms, queries = tiny_batch(tiny_dataset, recipe)
    objective = VariationalObjective(vae, recipe.loss, loss_terms)
    guide = poutine.trace(objective.guide).get_trace(atoms, queries)
    model = poutine.trace(poutine.replay(objective.model, trace=guide)).get_trace(atoms, queries)

    def latent_sites(trace):
        return {
            name
            for name, site in trace.nodes.items()
            if site["type"] == "sample" and not site["is_observed"] and not site_is_subsample(site)
        }

    assert latent_sites(guide) == latent_sites(model) == {LATENT}
    assert {FIELD_LIKELIHOOD, LATTICE_LIKELIHOOD} <= set(model.nodes)
    for trace in (guide, model):
        site = trace.nodes[LATENT]
        assert site["value"].shape == (8, recipe.model.latent_size)
        assert [frame.name for frame in site["cond_indep_stack"]] == [STRUCTURES]
    assert torch.equal(model.nodes[LATENT]["value"], guide.nodes[LATENT]["value"])  # the guide's z is decoded


def test_elbo_decreases_under_svi(tiny_dataset):
    recipe = vae_recipe(tiny_dataset)
    vae, atoms, queries = tiny_batch(tiny_dataset, recipe)
    objective = VariationalObjective(vae, recipe.loss, loss_terms)
    svi = pyro.infer.SVI(
        objective.model, objective.guide, pyro.optim.Adam({"lr": 3e-3}), pyro.infer.Trace_ELBO(max_plate_nesting=1)
    )
    losses = [svi.step(atoms, queries, recipe.loss.kl) for _ in range(30)]
    assert sum(losses[-5:]) < 0.7 * sum(losses[:5])
    names = set(pyro.get_param_store().keys())
    assert names == {f"{MODULE}$$${name}" for name, _ in vae.named_parameters()}  # SVI trained the whole model


def test_the_kl_weight_pulls_the_posterior_to_the_prior(tiny_dataset):
    def kl_after_training(weight):
        recipe = vae_recipe(tiny_dataset, **{"loss.kl": weight})
        vae, atoms, queries = tiny_batch(tiny_dataset, recipe)
        objective = VariationalObjective(vae, recipe.loss, loss_terms)
        optimizer = torch.optim.Adam(vae.parameters(), lr=3e-3)
        for _ in range(20):
            losses = objective(atoms, queries, weight)
            optimizer.zero_grad()
            losses["total"].backward()
            optimizer.step()
        return losses["kl"].item()

    assert kl_after_training(10.0) < 0.5 * kl_after_training(1e-4)


def test_objective_reports_the_terms_and_rejects_no_kl(tiny_dataset):
    recipe = vae_recipe(tiny_dataset)
    vae, atoms, queries = tiny_batch(tiny_dataset, recipe)
    losses = VariationalObjective(vae, recipe.loss, loss_terms)(atoms, queries, recipe.loss.kl)
    assert set(losses) == {"total", "position", "species", "length", "angle", "kl"}
    assert losses["total"].requires_grad and losses["kl"].item() > 0
    with pytest.raises(UserError, match="loss.kl > 0"):
        VariationalObjective(vae, LossConfig(kl=0.0), loss_terms)


def test_kl_warmup_schedule():
    warm = LossConfig(kl=0.001, kl_warmup_epochs=4)
    assert [kl_weight(warm, epoch) for epoch in range(6)] == pytest.approx(
        [0.00025, 0.0005, 0.00075, 0.001, 0.001, 0.001]
    )
    assert kl_weight(LossConfig(kl=0.002), 0) == 0.002


def test_vae_training_resumes_exactly_and_evaluates(tiny_dataset, tmp_path):
    recipe = vae_recipe(tiny_dataset, **{"loss.kl_warmup_epochs": 2})
    result = train(recipe, tmp_path / "straight")
    assert [row["kl_weight"] for row in result.history] == pytest.approx([0.0005, 0.001])
    assert all(row["train_kl"] > 0 and row["val_kl"] > 0 for row in result.history)
    train(vae_recipe(tiny_dataset, **{"loss.kl_warmup_epochs": 2, "train.epochs": 1}), tmp_path / "split")
    resume(tmp_path / "split", {"train.epochs": "2"})
    a = read_checkpoint(tmp_path / "straight" / "last.pt")["model"]
    b = read_checkpoint(tmp_path / "split" / "last.pt")["model"]
    assert any("scale_head" in key for key in a)
    assert all(torch.equal(a[key], b[key]) for key in a)

    trained = load_model(tmp_path / "straight")
    assert isinstance(trained.model, VariationalNeSF)
    atoms = TensorSet(tiny_dataset.load("test"), trained.species_table).batch(torch.arange(3))
    with torch.no_grad():
        assert torch.equal(trained.model.encode(atoms), trained.model.posterior(atoms)[0])  # the posterior mean
    summary = evaluate(
        EvaluateOptions(checkpoint=str(tmp_path / "straight"), data=str(tiny_dataset.path), split="test")
    ).summary
    assert summary["num_structures"] == 6 and summary["trained_on_this_dataset"]


def test_a_vae_starts_from_a_trained_autoencoder(tiny_dataset, tmp_path):
    autoencoder = train(tiny_recipe(tiny_dataset, **{"train.epochs": 1}), tmp_path / "ae")
    weights = read_checkpoint(tmp_path / "ae" / "last.pt")["model"]
    warm_start = {"train.init_from": str(autoencoder.run_dir), "model.dropout": "0.05"}  # dropout may differ
    trainer = Trainer(vae_recipe(tiny_dataset, **warm_start), tmp_path / "vae")
    mine = trainer.model.state_dict()
    assert all(torch.equal(mine[key], value) for key, value in weights.items())
    assert any(key.startswith("scale_head") for key in mine if key not in weights)

    other_width = vae_recipe(tiny_dataset, **{"train.init_from": str(autoencoder.run_dir), "model.latent_size": "24"})
    with pytest.raises(
        UserError, match=r"train.init_from.*\[model\] section differs.*model.latent_size = 16 there, 24 here"
    ):
        Trainer(other_width, tmp_path / "bad")


def test_each_run_starts_from_an_empty_param_store(tiny_dataset, tmp_path):
    pyro.get_param_store().setdefault("left-over", torch.zeros(1))
    trainer = Trainer(vae_recipe(tiny_dataset, **{"train.epochs": 1}), tmp_path / "run")
    assert len(pyro.get_param_store()) == 0
    trainer.run()
    assert "left-over" not in pyro.get_param_store()
    assert len(pyro.get_param_store()) == len(list(trainer.model.parameters()))


def test_a_vae_refits_its_lattice_heads_on_posterior_means(tiny_dataset, tmp_path):
    result = train(vae_recipe(tiny_dataset, **{"train.epochs": 1, "train.lattice_refit_epochs": 3}), tmp_path / "run")
    assert result.lattice_refit is not None and result.lattice_refit["epochs"] == 3
    refit, trained = (
        read_checkpoint(tmp_path / "run" / "best.pt"),
        read_checkpoint(tmp_path / "run" / "best.before-refit.pt"),
    )
    changed = [key for key, value in trained["model"].items() if not torch.equal(refit["model"][key], value)]
    assert changed and all(key.startswith("lattice_head.") for key in changed)


def test_shipped_vae_recipes():
    quick, lcs6 = load_recipe("vae-quickstart"), load_recipe("vae-lcs6")
    assert quick.model.variational and quick.data.name == "builtin"
    assert lcs6.model.variational and lcs6.data.name == "lcs6" and lcs6.loss.kl == 1e-4
    assert lcs6.train.lattice_refit_epochs > 0  # heads refit on posterior means
    assert lcs6.train.precision == "bf16" and lcs6.sampling.query_fraction == 0.25
    assert 0 < lcs6.train.time_limit_minutes <= 120
    assert not load_recipe("quickstart", TINY_MODEL).model.variational
