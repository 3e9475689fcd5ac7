import pytest

from nesfgen.config import (
    Recipe,
    all_keys,
    from_dict,
    load_recipe,
    parse_overrides,
    recipe_names,
    to_dict,
    to_toml,
    tomllib,
)
from nesfgen.errors import UserError


@pytest.mark.parametrize("name", recipe_names())
def test_every_shipped_recipe_loads_and_says_how_to_launch(name):
    from nesfgen.config import recipe_path

    recipe = load_recipe(name)
    assert recipe.name == name
    assert recipe_path(name).read_text().startswith(f"# nesfgen train recipe={name}")


def test_quickstart_trains_fast_for_a_fixed_number_of_epochs():
    recipe = load_recipe("quickstart")
    t = recipe.train
    assert recipe.data.name == "builtin" and t.epochs > 0 and t.lr_schedule == "cosine"
    assert t.precision == "bf16" and t.compile and t.lattice_refit_epochs > 0
    assert recipe.sampling.query_fraction < 1 and recipe.sampling.global_query_fraction < 1
    assert 5 <= t.time_limit_minutes <= 10  # a guard for slow machines, not what ends the run on 2 quiet cores


def test_overrides_are_typed():
    recipe = load_recipe(
        "paper-lcs6",
        {
            "train.epochs": "10",
            "train.lr": "3e-4",
            "model.position_widths": "[64, 64]",
            "model.positional_encoding": "true",
            "data.fold": "none",
        },
    )
    assert recipe.train.epochs == 10 and recipe.train.lr == 3e-4
    assert recipe.model.position_widths == (64, 64)
    assert recipe.model.positional_encoding is True
    assert recipe.data.fold is None


def test_paper_recipe_keeps_the_paper_values():
    recipe = load_recipe("paper-lcs6")
    assert (recipe.train.epochs, recipe.train.lr, recipe.train.lr_decay_every, recipe.train.lr_decay_factor) == (
        3200,
        1e-3,
        640,
        0.5,
    )
    assert (recipe.loss.position, recipe.loss.species, recipe.loss.length, recipe.loss.angle) == (10, 0.1, 1, 1)
    assert recipe.model.latent_size == 192 and len(recipe.model.position_widths) + 1 == 9


def test_unknown_key_suggests_the_closest():
    with pytest.raises(UserError, match="did you mean model.latent_size"):
        load_recipe("quickstart", {"model.latnet_size": "3"})


@pytest.mark.parametrize(
    "key, value, expected",
    [
        ("train.epochs", "ten", "integer"),
        ("train.lr", "fast", "number"),
        ("model.batch_norm", "maybe", "true or false"),
        ("train.epochs", "2.5", "integer"),
    ],
)
def test_wrong_type_says_what_was_expected(key, value, expected):
    with pytest.raises(UserError, match=expected):
        load_recipe("quickstart", {key: value})


def test_setting_a_section_is_refused():
    with pytest.raises(UserError, match="section"):
        load_recipe("quickstart", {"train": "3"})


def test_toml_round_trip():
    recipe = load_recipe("paper-ybco", {"data.fold": "7"})
    again = from_dict(Recipe, tomllib.loads(to_toml(recipe)), where="test")
    assert to_dict(again) == to_dict(recipe)
    assert recipe.data.dataset_name == "ybco-fold7"


def test_recipe_file_errors(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[train]\nepochz = 3\n")
    with pytest.raises(UserError, match="did you mean train.epochs"):
        load_recipe(str(bad))
    bad.write_text("[train\n")
    with pytest.raises(UserError, match="not valid TOML"):
        load_recipe(str(bad))


def test_parse_overrides_splits_words():
    overrides, words = parse_overrides(["a.b=1", "ZnS", "c=x=y"])
    assert overrides == {"a.b": "1", "c": "x=y"} and words == ["ZnS"]
    assert "train.epochs" in all_keys(Recipe())
