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


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"[train]\nepochz = 3\n", "did you mean train.epochs"),
        (b"[train\n", "not valid TOML"),
        (b'name = "x"\n\xff\xfe[train]\n', "is not UTF-8 text"),
        (b"# nothing yet\n", "holds no settings"),  # it would run every default: the paper's 3200 epochs
    ],
)
def test_recipe_file_errors(tmp_path, content, message):
    bad = tmp_path / "bad.toml"
    bad.write_bytes(content)
    with pytest.raises(UserError, match=message):
        load_recipe(str(bad))


def test_a_recipe_extends_another_section_by_section(tmp_path):
    child = tmp_path / "longer.toml"
    child.write_text('extends = "fast-lcs6"\n[train]\nepochs = 800\n')
    base, longer = load_recipe("fast-lcs6"), load_recipe(str(child))
    assert longer.name == "longer" and longer.train.epochs == 800
    assert to_dict(longer)["train"] | {"epochs": 450} == to_dict(base)["train"]
    assert {k: v for k, v in to_dict(longer).items() if k not in ("name", "train")} == {
        k: v for k, v in to_dict(base).items() if k not in ("name", "train")
    }
    grandchild = tmp_path / "grand.toml"
    grandchild.write_text(f'extends = "{child}"\nname = "grand"\n[model]\ndropout = 0.2\n')
    grand = load_recipe(str(grandchild))
    assert (grand.name, grand.train.epochs, grand.model.dropout, grand.data.name) == ("grand", 800, 0.2, "lcs6")


def test_recipe_extends_errors(tmp_path):
    loop = tmp_path / "loop.toml"
    loop.write_text(f'extends = "{loop}"\n')
    with pytest.raises(UserError, match="leads back to itself"):
        load_recipe(str(loop))
    loop.write_text("extends = 3\n")
    with pytest.raises(UserError, match="extends must be the name or path"):
        load_recipe(str(loop))
    loop.write_text('extends = "no-such-recipe"\n')
    with pytest.raises(UserError, match="unknown recipe 'no-such-recipe'"):
        load_recipe(str(loop))


def test_parse_overrides_splits_words():
    overrides, words = parse_overrides(["a.b=1", "ZnS", "c=x=y"])
    assert overrides == {"a.b": "1", "c": "x=y"} and words == ["ZnS"]
    assert "train.epochs" in all_keys(Recipe())


# The cases of issue 30 (each once a traceback, a failure after an epoch, or a useless exit 0), and one
# more per kind of rule: every key is checked when the recipe and its overrides are loaded.
@pytest.mark.parametrize(
    "key, value, allowed",
    [
        ("train.lr", "-1", "a finite number > 0"),
        ("train.lr", "nan", "a finite number > 0"),
        ("train.lr", "inf", "a finite number > 0"),
        ("train.lr", "0", "a finite number > 0"),
        ("model.dropout", "2", r"a finite number in \[0, 1\)"),
        ("model.dropout", "1", r"a finite number in \[0, 1\)"),
        ("model.position_widths", "[]", "a non-empty list of integers"),
        ("model.encoder_head_widths", "64,0", "a non-empty list of integers"),
        ("model.species_widths", "99999999", "a non-empty list of integers in \\[1, 16384\\]"),
        ("train.lr_decay_every", "0", "an integer >= 1"),
        ("train.epochs", "0", "an integer >= 1"),
        ("train.epochs", "-5", "an integer >= 1"),
        ("loss.position", "nan", "a finite number >= 0"),
        ("loss.kl", "-0.1", "a finite number >= 0"),
        ("model.latent_size", "0", r"an integer in \[1, 16384\]"),
        ("train.batch_size", "1", "an integer >= 2"),
        ("train.time_limit_minutes", "-1", "a finite number >= 0"),
        ("train.snapshot_every_minutes", "inf", "a finite number >= 0"),
        ("train.lr_decay_factor", "0", r"a finite number in \(0, 1\]"),
        ("train.lr_schedule", "linear", "one of step, cosine"),
        ("train.precision", "fp16", "one of fp32, bf16"),
        ("train.device", "banana", "auto, cpu, cuda, cuda:N or mps"),
        ("train.seed", "-1", "an integer in"),
        ("sampling.query_fraction", "0", r"a finite number in \(0, 1\]"),
        ("sampling.global_query_fraction", "1.5", r"a finite number in \(0, 1\], or none"),
        ("sampling.global_interval", "-1", "a finite number > 0"),
        ("sampling.local_std", "-0.1", "a finite number >= 0"),
        ("estimator.steps", "-1", "an integer in"),
        ("estimator.chunk_size", "0", "an integer in"),
        ("estimator.score_threshold", "nan", "a finite number > 0"),
        ("data.limit", "-1", "an integer >= 0"),
        ("data.fold", "-2", "an integer >= 0, or none"),
        ("data.train_split", "", "a non-empty string"),
    ],
)
def test_out_of_range_values_fail_when_loaded_naming_key_value_and_range(key, value, allowed):
    with pytest.raises(UserError, match=rf"^{key} = .* is not allowed; expected {allowed}"):
        load_recipe("quickstart", {key: value})


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"sampling.local_range": "1e9"}, "sampling.local_range = 1e.09 at sampling.local_interval = 0.3 Å makes"),
        ({"sampling.species_interval": "0.001"}, "lower sampling.species_range or raise sampling.species_interval"),
        ({"estimator.species_range": "50"}, "query points around every atom"),
        (dict.fromkeys(("loss.position", "loss.species", "loss.length", "loss.angle"), "0"), "nothing would be learnt"),
    ],
)
def test_settings_that_cannot_work_together_are_refused(overrides, message):
    with pytest.raises(UserError, match=message):
        load_recipe("quickstart", overrides)


def test_a_recipe_file_with_a_bad_value_names_the_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[train]\nlr = -1.0\n")
    with pytest.raises(UserError, match=rf"^{bad}: train.lr = -1.0 is not allowed"):
        load_recipe(str(bad))


def test_a_grid_too_fine_for_memory_is_refused_before_it_is_built():
    import numpy as np

    from nesfgen.sampling import box_grid

    box = np.array([[0.0, 0.0, 0.0], [10.0, 10.0, 10.0]])
    assert box_grid(box, 0.5, "estimator.particle_interval").shape == (22 * 22 * 22, 3)
    with pytest.raises(UserError, match="estimator.particle_interval = 0.01 Å gives about .* grid points"):
        box_grid(box, 0.01, "estimator.particle_interval")


def test_bad_values_exit_2_on_the_command_line(tmp_path, cli):
    result = cli("train", "train.lr_decay_every=0", f"out={tmp_path / 'run'}", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "train.lr_decay_every = 0 is not allowed; expected an integer >= 1" in result.stderr
    assert not (tmp_path / "run").exists()  # refused before anything is written


def test_an_estimator_that_never_moves_its_particles_is_refused():
    with pytest.raises(UserError, match="estimator.steps = 0 is not allowed"):
        load_recipe("quickstart", {"estimator.steps": "0"})
