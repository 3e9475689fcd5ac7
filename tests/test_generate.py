import json

import numpy as np
import pytest
import torch
from conftest import TINY_MODEL, cesium_chloride, tiny_recipe

from nesfgen import generate
from nesfgen.checkpoint import checkpoint_digest
from nesfgen.crystal import Crystal
from nesfgen.errors import UserError
from nesfgen.generate import DEFAULT_VAE_MODEL, SampleOptions, sample_latents, sample_structures
from nesfgen.prior import Condition, PriorConfig, check_model_prior, draw_conditions, fit_prior, load_prior, save_prior
from nesfgen.sample_files import write_samples
from nesfgen.train import train


def cubic(a, numbers, frac, id="x"):
    return Crystal.create([a] * 3, [90] * 3, atomic_numbers=numbers, frac_coords=frac, id=id)


def test_latents_follow_seed_temperature_and_centre():
    a, b = sample_latents(5, 4, seed=1), sample_latents(5, 4, seed=1)
    assert torch.equal(a, b) and not torch.equal(a, sample_latents(5, 4, seed=2))
    assert torch.allclose(sample_latents(5, 4, seed=1, temperature=0.5), 0.5 * a)
    centre = torch.arange(4.0)
    assert torch.allclose(sample_latents(5, 4, seed=1, center=centre, radius=0.1), centre + 0.1 * a)


@pytest.fixture
def vae_run(tiny_dataset, tmp_path):
    run = tmp_path / "vae"
    train(tiny_recipe(tiny_dataset, **{"model.variational": "true", "train.epochs": 2}), run)
    return run


FAST_DECODE = {"estimator.steps": "8"}


def test_a_negative_guidance_is_refused():
    with pytest.raises(UserError, match="guidance must be 0"):
        SampleOptions(guidance=-1.0)
    with pytest.raises(UserError, match="radius= is the spread around near="):  # it was ignored without near=
        SampleOptions(radius=0.3)
    with pytest.raises(UserError, match="temperature must be a positive, finite number"):
        SampleOptions(temperature=float("inf"))


def test_relaxation_settings_without_relax_are_refused():
    with pytest.raises(UserError, match="potential= go with relax=true"):
        SampleOptions(potential="0.3.0")
    with pytest.raises(UserError, match="potential=0.4.0 is not a CHGNet version"):
        SampleOptions(relax=True, potential="0.4.0")


def test_more_atoms_than_any_training_cell_held_are_refused_before_decoding(tmp_path):
    with pytest.raises(UserError, match="num_atoms=500: the model was trained on cells of 1 to 28 atoms"):
        sample_structures(SampleOptions(num_atoms=500, n=1, out=str(tmp_path / "out")))
    with pytest.raises(UserError, match="formula=Zn2S2O99: its smallest cell holds 103 atoms.*1 to 28 atoms"):
        sample_structures(SampleOptions(formula="Zn2S2O99", n=1, out=str(tmp_path / "out")))
    assert not (tmp_path / "out").exists()


def test_relaxing_against_a_hull_not_built_yet_is_refused_before_sampling(tmp_path):
    from conftest import rock_salt

    from nesfgen.data.store import write_dataset

    dataset = write_dataset(
        tmp_path / "two", {"train": [rock_salt(id="nacl")], "test": [rock_salt(id="t")]}, name="two"
    )
    out = tmp_path / "out"
    with pytest.raises(UserError, match="no CHGNet 0.3.0 hull for dataset .* build it once with `nesfgen data hull"):
        generate.sample(SampleOptions(relax=True, data=str(dataset.path), n=1, out=str(out)))
    assert not out.exists()


def test_samples_are_snapped_at_the_sampling_tolerance_unless_asked_otherwise():
    assert SampleOptions().symmetrize and SampleOptions().tolerance == 0.3
    assert SampleOptions(symmetrize=True, symprec=0.05).tolerance == 0.05
    assert not SampleOptions(symmetrize=False).symmetrize


def test_sampling_is_reproducible_for_a_seed(vae_run, tmp_path):
    first = sample_structures(SampleOptions(checkpoint=str(vae_run), n=4, seed=3, estimator=FAST_DECODE))
    again = sample_structures(SampleOptions(checkpoint=str(vae_run), n=4, seed=3, estimator=FAST_DECODE))
    write_samples(first, tmp_path / "a")
    write_samples(again, tmp_path / "b")
    assert (tmp_path / "a" / "samples.csv").read_text() == (tmp_path / "b" / "samples.csv").read_text()
    cifs = sorted(p.name for p in (tmp_path / "a").glob("sample-*.cif"))
    assert len(cifs) == first.summary["decoded"]
    assert all((tmp_path / "a" / n).read_text() == (tmp_path / "b" / n).read_text() for n in cifs)
    assert first.summary["reference"]["is_training_data"]
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert summary["n"] == 4 and summary["seed"] == 3 and "structural_validity_pct" in summary
    assert summary["symmetrize"] and summary["symmetrize_symprec"] == 0.3  # snapped at the sampling tolerance


def test_near_a_structure_and_the_autoencoder(vae_run, tiny_dataset, tmp_path):
    near = sample_structures(SampleOptions(checkpoint=str(vae_run), n=2, near="ZnS", radius=0.1, estimator=FAST_DECODE))
    assert near.summary["near_structure"].startswith("ZnS")  # found in the training set first
    cif = tmp_path / "cscl.cif"
    cif.write_text(cesium_chloride().to_cif())
    from_file = sample_structures(SampleOptions(checkpoint=str(vae_run), n=1, near=str(cif), estimator=FAST_DECODE))
    assert from_file.summary["generator"] == "near" and from_file.summary["near"] == str(cif)
    assert from_file.summary["near_structure"] and from_file.summary["radius"] == 0.5
    with pytest.raises(UserError, match="not trained on"):
        sample_structures(SampleOptions(checkpoint=str(vae_run), n=1, near="KCl"))  # K is not in the tiny species table
    train(tiny_recipe(tiny_dataset, **{"train.epochs": 1}), tmp_path / "ae")
    with pytest.raises(UserError, match="autoencoder"):
        sample_structures(SampleOptions(checkpoint=str(tmp_path / "ae"), n=2))
    around = sample_structures(SampleOptions(checkpoint=str(tmp_path / "ae"), n=2, near="NaCl", estimator=FAST_DECODE))
    assert around.summary["generator"] == "near" and around.summary["near_structure"].startswith("NaCl")
    assert around.summary["temperature"] is None and around.summary["prior"] is None  # no prior needed


def test_condition_rates_count_each_part_over_all_samples():
    rock_salt = cubic(5.64, [11] * 4 + [17] * 4, np.random.default_rng(0).random((8, 3)))
    primitive = cubic(3.99, [11, 17], [[0, 0, 0], [0.5, 0.5, 0.5]])
    blende = cubic(5.41, [30] * 4 + [16] * 4, np.random.default_rng(1).random((8, 3)))
    rows = [{"space_group_number": 1}] * 4
    wanted = Condition(elements=(11, 17), num_atoms=8)
    rates = generate.condition_rates(wanted, rows, [rock_salt, primitive, blende, None])  # None: nothing decoded
    assert rates == {"elements_pct": 50.0, "num_atoms_pct": 50.0, "all_pct": 25.0}
    each = [Condition(num_atoms=2), Condition(num_atoms=2), Condition(num_atoms=8), Condition(num_atoms=8)]
    assert generate.condition_rates(each, rows, [rock_salt, primitive, blende, None])["all_pct"] == 50.0


def test_a_fresh_install_samples_from_the_shipped_vae(tmp_path):
    """No dataset: the packaged VAE decodes, and novelty is skipped, not faked."""
    result = sample_structures(SampleOptions(n=1, seed=0, estimator=FAST_DECODE, prior="vae"))
    assert result.summary["checkpoint"].endswith(f"{DEFAULT_VAE_MODEL}.pt") and result.summary["variational"]
    assert result.summary["novelty_pct"] is None and result.summary["n"] == 1


def test_missing_shipped_models_are_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(generate, "PRIORS", tmp_path)
    with pytest.raises(UserError, match="no shipped prior"):
        sample_structures(SampleOptions(n=2))
    monkeypatch.setattr(generate, "PACKAGED_MODELS", tmp_path)
    with pytest.raises(UserError, match=f"default model {DEFAULT_VAE_MODEL} is not shipped"):
        sample_structures(SampleOptions(n=2, prior="vae"))


@pytest.fixture
def autoencoder_prior(tiny_dataset, tmp_path):
    """A tiny autoencoder and a flow-matching prior fitted for a few steps to random latents of its size."""
    run = tmp_path / "ae"
    train(tiny_recipe(tiny_dataset, **{"train.epochs": 1}), run)
    config = PriorConfig(kind="flowmatch", hidden=16, layers=2, steps=3, ode_steps=4)
    species = [int(z) for z in np.unique(tiny_dataset.load("train").atomic_numbers)]
    latents = torch.randn(20, int(TINY_MODEL["model.latent_size"]), generator=torch.Generator().manual_seed(0))
    prior = fit_prior(latents, config, species)
    prior.autoencoder, prior.autoencoder_digest = str(run), checkpoint_digest(run)
    return run, save_prior(prior, tmp_path / "prior.pt")


def test_a_prior_fitted_to_another_model_is_refused_before_sampling(autoencoder_prior, tiny_dataset, tmp_path):
    run, prior = autoencoder_prior
    other = tmp_path / "other"  # the same data and latent size: only the recorded checkpoint tells them apart
    train(tiny_recipe(tiny_dataset, **{"train.epochs": 1, "train.seed": 1}), other)
    with pytest.raises(UserError, match=r"fitted to the latents of .*ae, not of .*other .*prior fit checkpoint="):
        sample_structures(SampleOptions(checkpoint=str(other), n=1, prior=str(prior), out=str(tmp_path / "out")))
    with pytest.raises(UserError, match="fitted to the latents of"):
        generate.check_prior(generate.PriorCheckOptions(checkpoint=str(other), prior=str(prior)))
    assert not (tmp_path / "out").exists()


def test_an_older_prior_file_is_still_checked_for_its_latent_size(autoencoder_prior, tmp_path, caplog):
    run, _ = autoencoder_prior
    size = int(TINY_MODEL["model.latent_size"]) + 2
    older = fit_prior(torch.randn(8, size), PriorConfig(hidden=8, layers=1, steps=1, ode_steps=2, threads=1), [11, 17])
    path = save_prior(older, tmp_path / "older.pt")  # no autoencoder recorded, as format 1 wrote none
    with pytest.raises(UserError, match=f"the prior's latents have {size} dimensions"):
        sample_structures(SampleOptions(checkpoint=str(run), n=1, prior=str(path)))
    assert "does not record the model it was fitted to" in caplog.text


def test_prior_fit_on_the_command_line_records_its_model(cli, tiny_dataset, tmp_path):
    run = tmp_path / "ae"
    train(tiny_recipe(tiny_dataset, **{"train.epochs": 1}), run)
    out = tmp_path / "fitted.pt"
    result = cli(
        "prior", "fit", f"checkpoint={run}", "steps=3", "hidden=8", "layers=1", "threads=1", f"out={out}", "--json"
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["structures"] == 48  # the tiny training split
    fitted = load_prior(out)
    assert fitted.autoencoder == str(run) and fitted.autoencoder_digest == checkpoint_digest(run)
    refused = cli("prior", "check", "prior=vae")
    assert refused.returncode == 2 and "takes a learned prior" in refused.stderr


def test_autoencoder_with_a_learned_prior_and_a_condition(autoencoder_prior, tmp_path):
    run, prior = autoencoder_prior
    plain = sample_structures(SampleOptions(checkpoint=str(run), n=3, seed=1, prior=str(prior), estimator=FAST_DECODE))
    assert plain.summary["generator"] == "prior-flowmatch"  # the model's training split is here: drawn from it
    assert plain.summary["drawn"] == ["composition", "num_atoms"] and "composition_pct" in plain.summary["conditions"]
    assert plain.summary["temperature"] == generate.DRAWN_TEMPERATURE  # drawn conditions: the narrower start
    own = sample_structures(
        SampleOptions(checkpoint=str(run), n=3, seed=1, prior=str(prior), draw="none", estimator=FAST_DECODE)
    )
    assert own.summary["drawn"] is None and own.summary["conditions"] is None and own.summary["temperature"] == 1.0
    assert {"cov_recall_pct", "w1_density", "p1_pct", "test_split_p1_pct", "seconds"} <= set(plain.summary)
    asked = {"elements": "Zn,S", "num_atoms": 8}  # Condition(elements=(30, 16), num_atoms=8)
    conditioned = sample_structures(
        SampleOptions(checkpoint=str(run), n=3, seed=1, prior=str(prior), **asked, guidance=2.0, estimator=FAST_DECODE)
    )
    rates = conditioned.summary["conditions"]
    assert set(rates) == {"elements_pct", "num_atoms_pct", "all_pct"} and 0 <= rates["all_pct"] <= 100
    assert conditioned.summary["species_constrained"]  # decoded species restricted to Zn and S
    assert conditioned.summary["decoded"] > 0  # else the next line would hold for nothing
    assert all(set(c.atomic_numbers.tolist()) <= {30, 16} for c in conditioned.crystals if c is not None)
    free = sample_structures(
        SampleOptions(
            checkpoint=str(run), n=3, seed=1, prior=str(prior), **asked, constrain=False, estimator=FAST_DECODE
        )
    )
    assert not free.summary["species_constrained"]
    write_samples(conditioned, tmp_path / "out")
    assert (tmp_path / "out" / "samples.extxyz").read_text().count("Lattice=") == conditioned.summary["decoded"]
    with pytest.raises(UserError, match="near= samples around one structure and takes no condition"):
        sample_structures(SampleOptions(checkpoint=str(run), n=1, near="NaCl", **asked))
    with pytest.raises(UserError, match="need a learned prior"):
        sample_structures(SampleOptions(prior="vae", n=1, **asked))


def test_each_sample_can_draw_its_condition_from_the_training_split(autoencoder_prior, tiny_dataset):
    run, prior = autoencoder_prior
    options = SampleOptions(checkpoint=str(run), n=4, seed=2, prior=str(prior), draw="elements", estimator=FAST_DECODE)
    drawn = sample_structures(options)
    assert drawn.summary["drawn"] == ["elements"] and drawn.summary["species_constrained"]
    assert set(drawn.summary["conditions"]) == {"elements_pct", "all_pct"}
    train = tiny_dataset.load("train")
    systems = {frozenset(train[i].atomic_numbers.tolist()) for i in range(len(train))}
    wanted = draw_conditions(train, ("elements",), 4, 2)  # the same draw as the sampling's
    assert drawn.summary["decoded"] > 0  # else the loop below would check nothing
    for condition, crystal in zip(wanted, drawn.crystals):
        assert frozenset(condition.elements) in systems
        if crystal is not None:  # voted among that training structure's own elements only
            assert set(crystal.atomic_numbers.tolist()) <= set(condition.elements)
    again = sample_structures(options)
    assert [c.formula if c else None for c in again.crystals] == [c.formula if c else None for c in drawn.crystals]
    with pytest.raises(UserError, match="not a condition part"):
        SampleOptions(draw="colour")
    with pytest.raises(UserError, match="without elements="):
        SampleOptions(draw="elements", elements="Zn,S")


def test_draw_none_on_the_command_line_is_the_priors_own_compositions():
    from nesfgen.generate import _drawn_parts
    from nesfgen.options import parse_options

    given = parse_options(SampleOptions, ["draw=none"], "sample")
    assert given.draw == "none" and _drawn_parts(given, None, have_training_split=True) == ()
    assert parse_options(SampleOptions, [], "sample").draw == ""  # automatic


def test_a_prior_is_checked_and_scored_against_the_validation_split(autoencoder_prior, tmp_path):
    run, prior = autoencoder_prior
    check = check_model_prior(load_prior(prior), str(run), split="val", n=5)
    assert (check["train_structures"], check["held_out_structures"], check["split"]) == (48, 6, "val")
    assert all(check[key] > 0 for key in ("coverage", "precision", "held_out_precision", "std_ratio"))
    with pytest.raises(UserError, match="fitted to"):
        check_model_prior(load_prior(prior), str(run), split="train")
    scored = sample_structures(
        SampleOptions(checkpoint=str(run), n=2, seed=1, prior=str(prior), estimator=FAST_DECODE, coverage_split="val")
    )
    assert scored.summary["reference"]["coverage_split"] == "val"
    with pytest.raises(UserError, match="no split 'holdout'"):
        sample_structures(SampleOptions(checkpoint=str(run), n=1, prior=str(prior), coverage_split="holdout"))


def test_cli_trains_a_vae_then_samples_and_evaluates(cli, tiny_dataset, tmp_path):
    overrides = [f"{k}={v}" for k, v in TINY_MODEL.items()]
    data = f"data.name={tiny_dataset.path}"
    trained = cli(
        "train",
        "recipe=vae-quickstart",
        data,
        "train.batch_size=8",
        "train.epochs=1",
        *overrides,
        f"out={tmp_path / 'run'}",
        "--json",
    )
    assert trained.returncode == 0, trained.stderr[-2000:]
    sampled = cli(
        "sample",
        f"checkpoint={tmp_path / 'run'}",
        "n=3",
        "seed=1",
        f"out={tmp_path / 'samples'}",
        "estimator.steps=8",
        "symmetrize=true",
        "--json",
    )
    assert sampled.returncode == 0, sampled.stderr[-2000:]
    summary = json.loads(sampled.stdout)
    assert summary["n"] == 3 and summary["symmetrize"] and summary["reference"]["dataset"] == "tiny"
    assert (tmp_path / "samples" / "samples.csv").read_text().count("\n") == 4
    evaluated = cli(
        "evaluate", f"checkpoint={tmp_path / 'run'}", f"data={tiny_dataset.path}", "--json", f"out={tmp_path / 'eval'}"
    )
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    assert json.loads(evaluated.stdout)["num_structures"] == 6
    mistake = cli("sample", f"checkpoint={tmp_path / 'run'}", "n=0")
    assert mistake.returncode == 2 and "n must be at least 1" in mistake.stderr


def test_a_streamed_sampling_continues_where_it_stopped_and_matches_an_uninterrupted_one(vae_run, tmp_path):
    decode = {"estimator.steps": "8", "estimator.chunk_size": "2"}
    whole = sample_structures(
        SampleOptions(checkpoint=str(vae_run), n=5, seed=3, estimator=decode, out=tmp_path / "whole")
    )
    # an interrupted run: its first two chunks are on disk, the third never finished
    calls = []

    def stop_after_two_chunks(done, total):
        calls.append(done)
        if done == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        sample_structures(
            SampleOptions(checkpoint=str(vae_run), n=5, seed=3, estimator=decode, out=tmp_path / "cut"),
            stop_after_two_chunks,
        )
    chunks = sorted(p.name for p in (tmp_path / "cut" / "progress").glob("chunk-*.json"))
    assert chunks == ["chunk-00000000.json", "chunk-00000002.json"]
    resumed_from = []
    again = sample_structures(
        SampleOptions(checkpoint=str(vae_run), n=5, seed=3, estimator=decode, out=tmp_path / "cut"),
        lambda d, t: resumed_from.append(d),
    )
    assert resumed_from == [4, 5]  # continued after the saved samples, decoding only the last
    assert again.rows == whole.rows
    same = {"checkpoint": again.summary["checkpoint"], "seconds": again.summary["seconds"]}
    assert again.summary == whole.summary | same
    # other settings in the same folder: a new sampling replaces the old one's files, its summary among them (an
    # interrupted new sampling must not leave the old summary describing CIFs that are gone)
    write_samples(again, tmp_path / "cut")
    (tmp_path / "cut" / "baselines" / "test_split").mkdir(parents=True)
    other = sample_structures(
        SampleOptions(checkpoint=str(vae_run), n=2, seed=4, estimator=decode, out=tmp_path / "cut")
    )
    assert not (tmp_path / "cut" / "summary.json").exists() and not (tmp_path / "cut" / "baselines").exists()
    write_samples(other, tmp_path / "cut")
    assert len(list((tmp_path / "cut" / "progress").glob("chunk-*.json"))) == 1
    assert {p.stem for p in (tmp_path / "cut").glob("sample-*.cif")} <= {"sample-0000", "sample-0001"}


def test_a_huge_n_is_refused_with_an_estimate_unless_forced(vae_run, tmp_path, monkeypatch):
    monkeypatch.setattr(generate, "MAX_SAMPLES", 3)
    decode = {"estimator.steps": "2", "estimator.chunk_size": "2"}
    with pytest.raises(UserError, match=r"n=6 samples would take about .* days here .* more than 3 need force=true"):
        sample_structures(SampleOptions(checkpoint=str(vae_run), n=6, seed=0, estimator=decode, out=tmp_path / "big"))
    assert len(list((tmp_path / "big" / "progress").glob("chunk-*.json"))) == 1  # the timed chunk is kept
    forced = sample_structures(
        SampleOptions(checkpoint=str(vae_run), n=6, seed=0, estimator=decode, out=tmp_path / "big", force=True)
    )
    assert len(forced.rows) == 6


def test_cli_rejects_bad_conditions_and_priors_in_one_line(cli, tmp_path):
    bad_element = cli("sample", "elements=Zq", "n=1", f"out={tmp_path}")
    assert bad_element.returncode == 2 and "elements=Zq" in bad_element.stderr and "Traceback" not in bad_element.stderr
    bad_prior = cli("sample", "prior=bogus", "n=1", f"out={tmp_path}")
    assert bad_prior.returncode == 2 and "prior=bogus" in bad_prior.stderr


def test_baselines_are_scored_written_and_relaxed_beside_the_samples(cli, autoencoder_prior, tmp_path):
    """baselines=true relax=true: the ceiling (test split) and floor (pyxtal) rows, their CIFs, and their
    relaxations on the same terms as the samples'."""
    run, prior = autoencoder_prior
    out = tmp_path / "samples"
    args = [f"checkpoint={run}", f"prior={prior}", "n=2", "baselines=true", "relax=true", "steps=2", f"out={out}"]
    result = cli("sample", *args, "estimator.steps=8", "--json")
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads(result.stdout)
    assert summary["relax"] is None or summary["relax"]["n"] == summary["decoded"]  # a 1-epoch model may decode none
    rows = {"test_split", "test_split_reconstructed", "random_symmetric"}
    assert set(summary["baselines"]) == rows | {"train_split_draws"}
    assert summary["baselines"]["test_split"]["cov_recall_pct"] == 100.0
    assert len(list((out / "baselines" / "test_split_reconstructed").glob("*.cif"))) <= 6  # as many as decode
    assert len(list((out / "baselines" / "test_split").glob("*.cif"))) == 6  # the tiny dataset's test split
    assert set(summary["relax_baselines"]) == rows  # training structures are not candidates: not relaxed
    assert summary["relax_baselines"]["test_split"]["n"] == 6
    assert (out / "baselines" / "test_split" / "relaxed" / "relax.csv").is_file()
    shown = cli("sample", *args, "estimator.steps=8")  # the same again: resumed, and the table has both rows
    assert shown.returncode == 0 and "random symmetric" in shown.stdout and "test split" in shown.stdout, shown.stderr


def test_samples_that_miss_their_condition_are_drawn_again():
    """A decode that misses its sample's condition is replaced by the first redraw that holds it; one that
    never holds keeps its first decode, and each keeps its id and its symmetrisation flag."""
    from conftest import rock_salt, zinc_blende

    from nesfgen.decoder import Decoding, SpeciesConstraint
    from nesfgen.prior import Condition

    fills = []  # whether each decode may fill atoms in from the field

    class Decoder:  # rock salt where the latent is positive, zinc blende elsewhere
        def decode(self, z, ids, species=None):
            fills.append(species.fill if species is not None else None)
            crystals = [(rock_salt() if value > 0 else zinc_blende()).with_id(id) for value, id in zip(z[:, 0], ids)]
            return Decoding([None] * len(ids), crystals, [bool(value > 1) for value in z[:, 0]])

    salt = Condition(composition={11: 4.0, 17: 4.0}, num_atoms=8)
    asked = []

    def latents(indices, round):  # sample 0 holds at the second redraw, sample 2 never
        asked.append((indices, round))
        return torch.tensor([[2.0 if i == 0 and round == 2 else -1.0] for i in indices])

    redraw = generate.Redraw([salt, salt, salt], latents, rounds=2)
    first = Decoder().decode(torch.tensor([[-1.0], [0.5], [-1.0]]), ["sample-0000", "sample-0001", "sample-0002"])
    count = SpeciesConstraint((), None, 8, fill=False)
    chunk, unsymmetrized = generate._redraw_misses(Decoder(), redraw, 0, first, count)
    assert [c.formula for c in chunk] == ["Na4Cl4", "Na4Cl4", "Zn4S4"] and [c.id for c in chunk][0] == "sample-0000"
    assert unsymmetrized == [True, False, False]  # the kept redraw's flag
    assert asked == [([0, 2], 1), ([0, 2], 2)]  # only the misses are drawn again, each round
    assert fills == [None, False, True]  # atoms are filled in from the field on the last attempt only
    assert generate._redraws(SampleOptions(), ("composition",)) == 0  # drawn conditions: novelty would suffer
    assert generate._redraws(SampleOptions(), ()) == generate.CONDITION_REDRAWS
    assert generate._redraws(SampleOptions(redraws=1), ("composition",)) == 1
    with pytest.raises(UserError, match="redraws must be 0 or more"):
        SampleOptions(redraws=-1)
    with pytest.raises(UserError, match="seed must be 0 or more"):
        SampleOptions(seed=-1)
