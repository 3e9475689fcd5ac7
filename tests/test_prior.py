import numpy as np
import pytest
import torch

from nesfgen.checkpoint import checkpoint_digest
from nesfgen.errors import UserError
from nesfgen.prior import (
    Condition,
    ConditionEncoder,
    PriorConfig,
    condition_holds,
    fit_prior,
    latent_check,
    load_prior,
    parse_condition,
    parse_draw,
    save_prior,
)

SPECIES = (8, 11, 16, 17, 30)


def random_latents(count=32, size=6):
    return torch.randn(count, size, generator=torch.Generator().manual_seed(0)) * 3 + 1


@pytest.mark.parametrize("kind", ["flow", "flowmatch"])
def test_a_prior_fits_saves_and_samples_the_same_latents_again(kind, tmp_path):
    config = PriorConfig(kind=kind, hidden=16, layers=2, steps=5, batch_size=8, ode_steps=4)
    prior = fit_prior(random_latents(), config, SPECIES)
    assert prior.history["steps"] == 5 and np.isfinite(prior.history["final_loss"])
    first = prior.sample(7, seed=3)
    assert first.shape == (7, 6) and torch.isfinite(first).all()
    loaded = load_prior(save_prior(prior, tmp_path / "prior.pt"))  # weights_only=True inside
    assert torch.allclose(loaded.sample(7, seed=3), first, atol=1e-5)
    assert not torch.allclose(loaded.sample(7, seed=4), first)


@pytest.mark.parametrize("case", ["text", "empty", "foreign pickle", "missing contents"])
def test_a_damaged_prior_file_is_refused_with_a_message(case, tmp_path):
    path = tmp_path / "prior.pt"
    if case == "text":
        path.write_text("root:x:0:0:root:/root:/bin/bash\n")
    elif case == "empty":
        path.write_bytes(b"")
    elif case == "foreign pickle":
        torch.save({"format": 1, "config": Condition}, path)  # a class: not a tensor or plain value
    else:
        prior = fit_prior(random_latents(), PriorConfig(kind="flow", hidden=8, layers=1, steps=1), SPECIES)
        state = prior.state()
        del state["model"]
        torch.save(state, path)
    with pytest.raises(UserError, match=str(path)):
        load_prior(path)


def test_a_damaged_prior_file_exits_2_on_the_command_line(cli, tmp_path):
    (tmp_path / "prior.pt").write_text("not a prior")
    result = cli("sample", f"prior={tmp_path / 'prior.pt'}", "n=2", f"out={tmp_path / 'out'}")
    assert result.returncode == 2 and "is not a PyTorch latent prior file" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("setting", "message"),
    [({"steps": 0}, "steps=0"), ({"lr": -1.0}, "lr=-1.0"), ({"condition_dropout": 1.5}, "from 0 to 1")],
)
def test_prior_settings_that_fit_nothing_are_refused(setting, message):
    with pytest.raises(UserError, match=message):
        PriorConfig(**setting)


def test_conditions_need_the_flow_matching_prior_and_known_elements():
    flow = fit_prior(random_latents(), PriorConfig(kind="flow", hidden=8, layers=1, steps=1), SPECIES)
    with pytest.raises(UserError, match="need prior=flowmatch"):
        flow.sample(2, seed=0, condition=Condition(num_atoms=4))
    flowmatch = fit_prior(random_latents(), PriorConfig(hidden=8, layers=1, steps=1, ode_steps=2), SPECIES)
    with pytest.raises(UserError, match="Fe not among"):
        flowmatch.sample(2, seed=0, condition=Condition(elements=(26,)))
    assert flowmatch.sample(2, seed=0, condition=Condition(elements=(30, 16)), guidance=2.0).shape == (2, 6)


def test_each_sample_its_own_condition():
    prior = fit_prior(random_latents(), PriorConfig(hidden=8, layers=1, steps=1, ode_steps=2), SPECIES)
    each = [Condition(elements=(30, 16)), Condition(num_atoms=4), Condition()]
    z = prior.sample(3, seed=0, condition=each)
    assert z.shape == (3, 6)
    alone = [prior.sample(3, seed=0, condition=c)[k] for k, c in enumerate(each)]  # same noise, one condition each
    assert torch.allclose(z, torch.stack(alone), atol=1e-5)
    with pytest.raises(ValueError, match="2 conditions for 3 samples"):
        prior.sample(3, seed=0, condition=each[:2])
    assert parse_draw("composition, num_atoms") == ("composition", "num_atoms") and parse_draw(None) == ()


@pytest.mark.parametrize("kind", ["flow", "flowmatch"])
def test_a_low_temperature_narrows_the_samples(kind):
    prior = fit_prior(random_latents(), PriorConfig(kind=kind, hidden=8, layers=1, steps=1, ode_steps=2), SPECIES)
    spread = prior.sample(20, seed=0).std(dim=0).mean()
    narrow = prior.sample(20, seed=0, temperature=1e-3).std(dim=0).mean()
    assert spread > 0.1 and narrow < 0.01 * spread


def test_condition_vector_parts_and_dropout():
    encoder = ConditionEncoder(SPECIES)
    vector = encoder.encode(Condition(elements=(30, 16), num_atoms=8, spacegroup=216))
    assert vector.shape == (encoder.size,) and encoder.size == 5 + 1 + 5 + 1 + 1 + 1 + 7 + 1 + 230 + 1
    assert vector[:6].tolist() == [0, 0, 1, 0, 1, 1]  # S and Zn present, the part's flag set
    assert vector[6:12].tolist() == [0] * 6  # no composition given: zeros, flag 0
    assert vector[12:14].tolist() == [pytest.approx(8 / 20), 1]
    hidden = encoder.drop(vector.repeat(4, 1), 1.0, torch.Generator().manual_seed(0))
    assert not hidden.any()
    kept = encoder.drop(vector.repeat(4, 1), 0.0, torch.Generator().manual_seed(0))
    assert torch.equal(kept, vector.repeat(4, 1))
    rows = encoder.drop(vector.repeat(1000, 1), 0.0, torch.Generator().manual_seed(0), everything=0.3)
    emptied = ~rows.any(dim=1)
    assert 250 < int(emptied.sum()) < 350 and torch.equal(rows[~emptied], vector.repeat(int((~emptied).sum()), 1))


def test_condition_holds_in_a_structure():
    zinc_blende = np.array([30] * 4 + [16] * 4)
    zns = parse_condition(elements="Zn,S", formula="ZnS", num_atoms=8, crystal_system_name="cubic", spacegroup=216)
    assert condition_holds(zns, zinc_blende, 216) == dict.fromkeys(
        ["elements", "composition", "num_atoms", "crystal_system", "spacegroup"], True
    )
    assert condition_holds(zns, np.array([30] * 4 + [16] * 2), 1) == dict.fromkeys(
        ["elements", "composition", "num_atoms", "crystal_system", "spacegroup"], False
    ) | {"elements": True}
    with pytest.raises(UserError, match="elements=Zq"):
        parse_condition(elements="Zq")
    with pytest.raises(UserError, match="formula="):
        parse_condition(formula="not a formula")
    with pytest.raises(UserError, match="formula=Xx2: not a chemical formula of elements"):
        parse_condition(formula="Xx2")  # pymatgen reads it as a dummy species


def test_conditions_no_structure_can_meet_together_are_refused_by_name():
    assert parse_condition(formula="Zn2S2O99").fewest_atoms() == 103
    assert parse_condition(formula="Zn2S2").fewest_atoms() == 2
    assert parse_condition(formula="Li0.5CoO2").fewest_atoms() == 7
    assert parse_condition(formula="ZnS", num_atoms=8).num_atoms == 8
    with pytest.raises(UserError, match="elements=Zn,O and formula=ZnS name different elements"):
        parse_condition(elements="Zn,O", formula="ZnS")
    with pytest.raises(UserError, match="num_atoms=3 and formula=ZnS: .* a multiple of 2 atoms"):
        parse_condition(formula="ZnS", num_atoms=3)
    with pytest.raises(UserError, match="spacegroup=225 is cubic, not crystal_system=tetragonal"):
        parse_condition(crystal_system_name="tetragonal", spacegroup=225)


def test_every_shipped_prior_loads_and_samples():
    from nesfgen.generate import PRIORS

    for path in sorted(PRIORS.glob("*.pt")):
        prior = load_prior(path)
        assert prior.autoencoder and prior.sample(2, seed=0).shape == (2, prior.mean.numel())
        assert prior.autoencoder_digest == checkpoint_digest(prior.autoencoder)  # refit when the model is reshipped


def test_the_latent_check_measures_nearest_distances_and_spread():
    samples = torch.tensor([[0.0, 0.0], [3.0, 4.0]])
    train = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    held_out = torch.tensor([[3.0, 0.0]])
    check = latent_check(samples, train, held_out)
    assert check["coverage"] == pytest.approx(3.0)  # [3, 0] is 3 from [0, 0] and 4 from [3, 4]
    assert check["precision"] == pytest.approx((0.0 + 13**0.5) / 2)  # [3, 4] is nearest to [1, 1]
    assert check["held_out_precision"] == pytest.approx(5**0.5)
    assert check["std_ratio"] == pytest.approx((3 + 4) / 2)  # sample spreads 3/sqrt2, 4/sqrt2 over 1/sqrt2


def two_groups(count=256, size=4):
    """Latents in two clusters, -3 and +3 on the first axis; the first half of 2-atom cells, the second of 8."""
    noise = 0.3 * torch.randn(count, size, generator=torch.Generator().manual_seed(1))
    sign = torch.where(torch.arange(count) < count // 2, -1.0, 1.0)
    return noise + torch.outer(sign, torch.eye(size)[0] * 3.0), sign


@pytest.mark.parametrize(
    "config",
    [
        PriorConfig(kind="flow", hidden=32, layers=2, steps=500, batch_size=64, lr=3e-3, threads=1),
        PriorConfig(hidden=64, layers=2, steps=3000, batch_size=128, lr=3e-3, ode_steps=16, threads=1),
    ],
    ids=["flow", "flowmatch"],
)
def test_a_fitted_prior_draws_both_modes_of_its_latents_and_not_the_gap(config):
    """An unfitted model would draw around the mean, 0, where no latent lies."""
    latents, _ = two_groups()
    first = fit_prior(latents, config, SPECIES).sample(400, seed=0)[:, 0]
    assert (first.abs() > 1.5).float().mean() > 0.8  # near one of the modes, not between them
    assert 0.3 < (first > 0).float().mean() < 0.7  # and both modes drawn


def test_a_condition_steers_the_samples_to_its_group_and_guidance_0_ignores_it():
    latents, sign = two_groups()
    conditions = [Condition(num_atoms=2 if s < 0 else 8) for s in sign]
    config = PriorConfig(hidden=64, layers=2, steps=1500, batch_size=128, lr=3e-3, ode_steps=16, threads=1)
    prior = fit_prior(latents, config, SPECIES, conditions)
    small = prior.sample(100, seed=0, condition=Condition(num_atoms=2))[:, 0]
    large = prior.sample(100, seed=0, condition=Condition(num_atoms=8))[:, 0]
    assert (small < 0).float().mean() > 0.9 and (large > 0).float().mean() > 0.9
    unconditional = prior.sample(100, seed=0)
    assert torch.allclose(prior.sample(100, seed=0, condition=Condition(num_atoms=8), guidance=0.0), unconditional)
