"""Typed recipes: frozen dataclasses, TOML recipe files and dotted ``key=value`` overrides."""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import re
import sys
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

from nesfgen.errors import UserError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib


def shipped_dir(package: str) -> Path:
    """Folder of a data package shipped beside the code (top-level recipes/ and studies/)."""
    import importlib

    module = importlib.import_module(package)
    return Path(list(module.__path__)[0])


RECIPES_DIR = shipped_dir("nesfgen.recipes")

#: the tolerance the headline numbers use (symmetry recovery rate, data info histogram, symmetrize;
#: here because decoding options take it before symmetry is imported)
STATED_SYMPREC = 0.1


def check_symprec(value: Any, word: str = "symprec") -> float:
    """A symmetry tolerance as a float, or UserError unless it is a positive length in Å; ``word`` names the option."""
    try:
        symprec = float(value)
    except (TypeError, ValueError):
        raise UserError(f"{word} must be a positive length in Å, got {value!r}") from None
    if not math.isfinite(symprec) or symprec <= 0:
        raise UserError(f"{word} must be a positive length in Å, got {value!r}")
    return symprec


@dataclass(frozen=True)
class Allowed:
    """The valid values of one config field: a test, and the words that tell a user what passes it."""

    text: str
    test: Callable[[Any], bool]


def number(low: float, high: float = math.inf, low_open: bool = False, high_open: bool = False) -> Allowed:
    """A finite number in [low, high], either end open on request (NaN and infinities never pass)."""
    left, right = "(" if low_open else "[", ")" if high_open else "]"
    text = f"a finite number > {low:g}" if low_open else f"a finite number >= {low:g}"
    if high != math.inf:
        text = f"a finite number in {left}{low:g}, {high:g}{right}"

    def test(value: float) -> bool:
        return (
            math.isfinite(value)
            and (value > low if low_open else value >= low)
            and (value < high if high_open else value <= high)
        )

    return Allowed(text, test)


def integer(low: int, high: int | None = None) -> Allowed:
    return Allowed(
        f"an integer >= {low}" if high is None else f"an integer in [{low}, {high}]",
        lambda value: value >= low and (high is None or value <= high),
    )


def one_of(*choices: str) -> Allowed:
    return Allowed(f"one of {', '.join(choices)}", lambda value: value in choices)


def optional(allowed: Allowed) -> Allowed:
    return Allowed(f"{allowed.text}, or none", lambda value: value is None or allowed.test(value))


NOT_EMPTY = Allowed("a non-empty string", lambda value: bool(value.strip()))
#: a device's name as torch spells it; whether it exists here is known only when training starts
DEVICE_NAME = Allowed(
    "auto, cpu, cuda, cuda:N or mps", lambda value: re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", value) is not None
)
#: The widest layer (and latent) a recipe may ask for: 16384 × 16384 weights are 1 GiB in fp32.
MAX_WIDTH = 16384
WIDTHS = Allowed(
    f"a non-empty list of integers in [1, {MAX_WIDTH}]",
    lambda value: len(value) > 0 and all(1 <= w <= MAX_WIDTH for w in value),
)
WIDTH = integer(1, MAX_WIDTH)
FRACTION = number(0.0, 1.0, low_open=True)
#: Points of a local grid around each atom (training queries, the estimator's species grid): 16 per axis.
#: Every atom of a batch gets that many queries, so a grid of millions runs out of memory before one step.
MAX_LOCAL_POINTS = 16**3


def local_grid_points(interval: float, width: float) -> int:
    """Points of the local grid ``arange(-width/2, width/2, interval)`` per axis, cubed (see nesfgen.sampling)."""
    return math.ceil(width / interval) ** 3


def check_local_grid(section: str, interval_key: str, range_key: str, interval: float, width: float) -> None:
    points = local_grid_points(interval, width)
    if points > MAX_LOCAL_POINTS:
        raise UserError(
            f"{section}.{range_key} = {width:g} at {section}.{interval_key} = {interval:g} Å makes {_count(points)} query "
            f"points around every atom (at most {MAX_LOCAL_POINTS:,}: a batch would not fit in memory); "
            f"lower {section}.{range_key} or raise {section}.{interval_key}"
        )


def _count(number: int) -> str:
    return f"{number:,}" if number < 10**9 else f"{float(number):.1e}"


class Checked:
    """Checks every field against the section's RULES when an instance is made (loaded, overridden or replaced).

    So a bad value fails at once, naming its key, instead of deep inside training or after an epoch.
    """

    SECTION: ClassVar[str] = ""
    RULES: ClassVar[dict[str, Allowed]] = {}

    def __post_init__(self) -> None:
        for name, allowed in self.RULES.items():
            value = getattr(self, name)
            if not allowed.test(value):
                shown = list(value) if isinstance(value, tuple) else value
                raise UserError(f"{self.SECTION}.{name} = {shown!r} is not allowed; expected {allowed.text}")
        self.check_together()

    def check_together(self) -> None:
        """Rules across several fields of the section (none by default)."""


@dataclass(frozen=True)
class DataConfig(Checked):
    """Which dataset to train on and which of its splits play which role."""

    SECTION = "data"
    RULES = {
        "name": NOT_EMPTY,
        "fold": optional(integer(0)),
        "train_split": NOT_EMPTY,
        "val_split": NOT_EMPTY,
        "test_split": NOT_EMPTY,
        "limit": integer(0),
    }

    name: str = "builtin"
    fold: int | None = None  # for cross-validated datasets: "ybco" + fold 3 -> "ybco-fold3"
    train_split: str = "train"
    val_split: str = "val"
    test_split: str = "test"
    limit: int = 0  # use only the first N structures of each split (0 = all); for smoke runs

    @property
    def dataset_name(self) -> str:
        return self.name if self.fold is None else f"{self.name}-fold{self.fold}"


@dataclass(frozen=True)
class ModelConfig(Checked):
    """Widths and switches of the encoder, the two fields and the lattice heads."""

    SECTION = "model"
    RULES = {
        "latent_size": WIDTH,
        "encoder_position_widths": WIDTHS,
        "encoder_species_widths": WIDTHS,
        "encoder_mix_width": WIDTH,
        "encoder_head_widths": WIDTHS,
        "dropout": number(0.0, 1.0, high_open=True),
        "position_widths": WIDTHS,
        "species_widths": WIDTHS,
        "lattice_hidden": WIDTH,
        "encoding_frequencies": integer(1, 24),  # sin(2^k π p): beyond 2^23 float32 positions carry no phase
        "encoder_cell_frequencies": integer(0, 16),
        "encoder_pooling": one_of("max", "max+mean"),
    }

    latent_size: int = 192
    encoder_position_widths: tuple[int, ...] = (64, 128, 128)
    encoder_species_widths: tuple[int, ...] = (128, 128)
    encoder_mix_width: int = 512
    encoder_head_widths: tuple[int, ...] = (256, 256)
    # the encoder also sees sin/cos(2π k f) of each atom's fractional coordinates f, k = 1..this (0: the paper's
    # Cartesian coordinates only), and pools by max (the paper) or by max and mean side by side
    encoder_cell_frequencies: int = 0
    encoder_pooling: str = "max"
    dropout: float = 0.3
    batch_norm: bool = True  # in the encoder
    field_batch_norm: bool = True  # in the position and species fields
    position_widths: tuple[int, ...] = (256, 128, 128, 128, 128, 128, 128, 128)
    species_widths: tuple[int, ...] = (256, 128)
    lattice_hidden: int = 128
    positional_encoding: bool = False
    encoding_frequencies: int = 10
    variational: bool = False  # a VAE (nesfgen.vae): the encoder also gives a posterior scale


@dataclass(frozen=True)
class SamplingConfig(Checked):
    """Training query grids (Å). "range" is the full width of a local grid."""

    SECTION = "sampling"
    RULES = {
        "global_interval": number(0.0, low_open=True),
        "global_std": number(0.0),
        "local_interval": number(0.0, low_open=True),
        "local_range": number(0.0, low_open=True),
        "local_std": number(0.0),
        "species_interval": number(0.0, low_open=True),
        "species_range": number(0.0, low_open=True),
        "species_std": number(0.0),
        "query_fraction": FRACTION,
        "global_query_fraction": optional(FRACTION),
        "close_neighbour_distance": optional(number(0.0, low_open=True)),
    }

    global_interval: float = 1.0
    global_std: float = 0.5
    local_interval: float = 0.3
    local_range: float = 1.2
    local_std: float = 0.15
    species_interval: float = 0.1
    species_range: float = 0.6
    species_std: float = 0.05
    query_fraction: float = 1.0  # keep this random fraction of the grid points each step
    global_query_fraction: float | None = None  # the global grid's own fraction; None = query_fraction
    # keep the global grid in proportion to a structure's atoms (the batch's total unchanged), so that an
    # atom's far-field queries do not fall as 1/N in crowded cells (docs/large-cells.md)
    global_per_atom: bool = False
    # atoms whose nearest neighbour in the cell is closer than this (Å) keep their whole local grid every step,
    # not query_fraction of it: the atoms of close pairs are those the field misses (docs/large-cells.md)
    close_neighbour_distance: float | None = None
    # move each training structure's atoms by a random fraction of its cell vectors every step (wrapped into the
    # cell): the same crystal at another origin (nesfgen.sampling.shift_origins); validation stays as given
    origin_shift: bool = False

    def check_together(self) -> None:
        check_local_grid(self.SECTION, "local_interval", "local_range", self.local_interval, self.local_range)
        check_local_grid(self.SECTION, "species_interval", "species_range", self.species_interval, self.species_range)


@dataclass(frozen=True)
class LossConfig(Checked):
    """Weights of the four loss terms, and of the KL term of a variational model."""

    SECTION = "loss"
    RULES = {
        **dict.fromkeys(("position", "species", "length", "angle", "kl"), number(0.0)),
        "kl_warmup_epochs": integer(0),
    }

    position: float = 10.0
    species: float = 0.1
    length: float = 1.0
    angle: float = 1.0
    kl: float = 0.001  # model.variational only: weight of the KL divergence summed over a batch's structures
    kl_warmup_epochs: int = 0  # raise the KL weight linearly to `kl` over this many epochs (0 = full from the start)

    def check_together(self) -> None:
        if not any((self.position, self.species, self.length, self.angle)):
            raise UserError(
                "loss.position, loss.species, loss.length and loss.angle are all 0: nothing would be learnt"
            )


@dataclass(frozen=True)
class TrainConfig(Checked):
    """Optimisation, schedule, hardware and bookkeeping."""

    SECTION = "train"
    RULES = {
        "epochs": integer(1),
        "batch_size": integer(2),  # BatchNorm needs two structures
        "lr": number(0.0, low_open=True),
        "lr_schedule": one_of("step", "cosine"),
        "lr_decay_every": integer(1),
        "lr_decay_factor": number(0.0, 1.0, low_open=True),
        "early_stopping_patience": integer(0),
        "seed": integer(0, 2**63 - 1),  # torch's seeds
        "device": DEVICE_NAME,
        "precision": one_of("fp32", "bf16"),
        "threads": integer(0, 4096),
        "time_limit_minutes": number(0.0),
        "snapshot_every_minutes": number(0.0),
        "lattice_refit_epochs": integer(0),
        "lattice_refit_lr": number(0.0, low_open=True),
        "lattice_refit_init": one_of("fresh", "trained"),
    }

    epochs: int = 3200
    batch_size: int = 64
    lr: float = 1e-3
    lr_schedule: str = "step"  # step: the paper's, × lr_decay_factor every lr_decay_every epochs | cosine
    lr_decay_every: int = 640  # epochs (step schedule)
    lr_decay_factor: float = 0.5  # (step schedule)
    early_stopping: bool = True  # keep the best-validation model (best.pt); false: best.pt is the last epoch
    early_stopping_patience: int = 0  # stop after this many epochs without improvement; 0 = run all epochs
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: str = "fp32"  # fp32 | bf16
    compile: bool = False  # torch.compile the two fields (fuses BatchNorm and ReLU; ~1.4x on CPU)
    threads: int = 0  # CPU threads for torch (0 = torch's default)
    deterministic: bool = True  # bit-identical runs for a seed (torch's deterministic kernels)
    time_limit_minutes: float = 0.0  # stop cleanly after this much training time (0 = none)
    snapshot_every_minutes: float = 0.0  # keep a checkpoint per this much training time, for accuracy-vs-time curves
    init_from: str = ""  # start from this checkpoint's weights (run, .pt or shipped name); "" = random init
    # init_from was trained on other data: keep its species table (this data's other elements appended, learnt
    # afresh) and widen its box to this data's atoms, so a model pre-trained on LCS6Å fine-tunes on YBCO-like folds
    fine_tune: bool = False
    lattice_refit_epochs: int = 0  # after training, refit the lattice heads on eval-mode latents (0 = off)
    lattice_refit_lr: float = 3e-4
    # fresh: new heads (output bias at the training mean) fitted from scratch, the heads as trained kept only if
    # better on validation; trained: continue from the heads as trained (before 0.2.0). docs/training.md
    lattice_refit_init: str = "fresh"


@dataclass(frozen=True)
class EstimatorConfig(Checked):
    """The deterministic particle estimator that decodes a latent into a crystal."""

    SECTION = "estimator"
    RULES = {
        "particle_interval": number(0.0, low_open=True),
        "steps": integer(1, 100_000),  # particles that never move decode nothing
        "score_threshold": number(0.0, low_open=True),
        "nms_radius": number(0.0, low_open=True),
        "nms_min_particles": integer(1),
        "species_interval": number(0.0, low_open=True),
        "species_range": number(0.0, low_open=True),
        "chunk_size": integer(1, 4096),
        "precision": one_of("fp32", "bf16"),
        "mode": one_of("fast", "paper"),
        "cell_margin": number(0.0, 10.0),
        "settle_distance": number(0.0),
    }

    particle_interval: float = 0.5
    steps: int = 64
    score_threshold: float = 0.9
    nms_radius: float = 0.5
    nms_min_particles: int = 10
    species_interval: float = 0.1
    species_range: float = 0.6
    chunk_size: int = 16  # structures decoded together
    precision: str = "fp32"  # fp32 | bf16: field passes under bf16 autocast, ~2x faster on CPUs with bf16 matmul
    # fast: particles only within cell_margin of the decoded cell, each dropped from later passes once its move is
    # shorter than settle_distance | paper: the paper's particles over the whole dataset box, every one moved each step
    mode: str = "fast"
    cell_margin: float = 1.0  # Å beyond the decoded cell's faces (fast mode): the outer half of a face atom's basin
    settle_distance: float = 1e-3  # Å (fast mode): a particle whose move is shorter stays where it is

    def check_together(self) -> None:
        check_local_grid(self.SECTION, "species_interval", "species_range", self.species_interval, self.species_range)


@dataclass(frozen=True)
class Recipe:
    """A whole training recipe."""

    name: str = "custom"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    estimator: EstimatorConfig = field(default_factory=EstimatorConfig)


def shipped_toml_names(folder: Path) -> list[str]:
    """Names of the TOML files shipped in a package folder (recipes, studies)."""
    return sorted(p.stem for p in folder.glob("*.toml"))


def shipped_toml_path(folder: Path, kind: str, name_or_path: str) -> Path:
    """Resolve a shipped name (``paper-lcs6``) in ``folder`` or a path to a TOML file; ``kind`` names it in errors."""
    candidate = Path(name_or_path)
    if candidate.suffix == ".toml" and candidate.is_file():
        return candidate
    shipped = folder / f"{name_or_path}.toml"
    if shipped.is_file():
        return shipped
    raise UserError(
        f"unknown {kind} {name_or_path!r}; shipped: {', '.join(shipped_toml_names(folder))} "
        f"(or give the path of a .toml {kind} file)"
    )


def recipe_names() -> list[str]:
    """Names of the recipes shipped with the package."""
    return shipped_toml_names(RECIPES_DIR)


def recipe_path(name_or_path: str) -> Path:
    """Resolve a recipe name (``paper-lcs6``) or a path to a TOML file."""
    return shipped_toml_path(RECIPES_DIR, "recipe", name_or_path)


def load_recipe(name_or_path: str = "quickstart", overrides: dict[str, str] | None = None) -> Recipe:
    """Load a recipe file and apply dotted overrides such as ``{"train.lr": "3e-4"}``."""
    path = recipe_path(name_or_path)
    document = _recipe_document(path, ())
    recipe = from_dict(Recipe, document, where=str(path))
    if "name" not in document:
        recipe = replace(recipe, name=path.stem)
    return apply_overrides(recipe, overrides or {})


def _recipe_document(path: Path, chain: tuple[Path, ...]) -> dict[str, Any]:
    """A recipe file's settings, on top of those of the recipe it names in ``extends`` (if any), section by
    section, so a recipe that changes one setting of another says only that. The base's name is not inherited."""
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise UserError(f"recipe file {path} is not UTF-8 text (a recipe is a TOML file)") from None
    except tomllib.TOMLDecodeError as error:
        raise UserError(f"recipe file {path} is not valid TOML: {error}") from None
    if not document:  # else an empty file would run every default: the paper's 3200 epochs
        raise UserError(
            f'recipe file {path} holds no settings; start from a shipped recipe, e.g. extends = "quickstart"'
        )
    base = document.pop("extends", None)
    if base is None:
        return document
    if not isinstance(base, str):
        raise UserError(f"{path}: extends must be the name or path of another recipe, got {base!r}")
    base_path = recipe_path(base)
    if base_path.resolve() in {p.resolve() for p in (*chain, path)}:
        raise UserError(f"{path}: extends {base!r} leads back to itself")
    merged = _recipe_document(base_path, (*chain, path))
    merged.pop("name", None)
    for key, value in document.items():
        merged[key] = (
            {**merged[key], **value} if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
        )
    return merged


def apply_overrides(recipe: Any, overrides: dict[str, str]) -> Any:
    """Return a copy of a config dataclass with each dotted key parsed into its field's type."""
    for key, text in overrides.items():
        recipe = _set_dotted(recipe, key.split("."), text, full_key=key)
    return recipe


def _set_dotted(obj: Any, parts: list[str], text: str, full_key: str) -> Any:
    hints = typing.get_type_hints(type(obj))
    names = [f.name for f in fields(obj)]
    head = parts[0]
    if head not in names:
        raise UserError(_unknown_key_message(full_key, obj, parts))
    current = getattr(obj, head)
    if len(parts) == 1:
        if is_dataclass(current):
            raise UserError(
                f"{full_key} is a section; set one of its keys, e.g. {full_key}.{fields(current)[0].name}=..."
            )
        value = parse_value(text, hints[head], full_key)
    else:
        if not is_dataclass(current):
            raise UserError(_unknown_key_message(full_key, obj, parts))
        value = _set_dotted(current, parts[1:], text, full_key)
    return replace(obj, **{head: value})


def _unknown_key_message(full_key: str, obj: Any, parts: list[str]) -> str:
    prefix = full_key[: len(full_key) - len(".".join(parts))]
    valid = [prefix + name for name in all_keys(obj)]
    close = difflib.get_close_matches(full_key, valid, n=1)
    hint = f"; did you mean {close[0]}?" if close else ""
    return f"unknown key {full_key}{hint} Valid keys: {', '.join(valid)}"


def all_keys(obj: Any) -> list[str]:
    """Every dotted leaf key of a config dataclass."""
    keys = []
    for f in fields(obj):
        value = getattr(obj, f.name)
        if is_dataclass(value):
            keys += [f"{f.name}.{sub}" for sub in all_keys(value)]
        else:
            keys.append(f.name)
    return keys


def parse_value(text: Any, annotation: Any, key: str) -> Any:
    """Parse a command-line string (or a TOML value) into the annotated type, or raise UserError."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if text is None or (isinstance(text, str) and text.lower() in ("none", "null", "")):
            if type(None) in args:
                return None
        inner = [a for a in args if a is not type(None)]
        return parse_value(text, inner[0], key)
    if origin is tuple:
        element = args[0]
        if isinstance(text, str):
            stripped = text.strip().strip("[]()")
            items = [s for s in stripped.replace(" ", "").split(",") if s] if stripped else []
        elif isinstance(text, (list, tuple)):
            items = list(text)
        else:
            raise UserError(f"{key} expects a list of {element.__name__}, got {text!r}")
        return tuple(parse_value(item, element, key) for item in items)
    if annotation is bool:
        if isinstance(text, bool):
            return text
        if isinstance(text, str) and text.lower() in ("true", "1", "yes", "on"):
            return True
        if isinstance(text, str) and text.lower() in ("false", "0", "no", "off"):
            return False
        raise UserError(f"{key} expects true or false, got {text!r}")
    if annotation is int:
        if isinstance(text, bool):
            raise UserError(f"{key} expects an integer, got {text!r}")
        try:
            number = float(text) if isinstance(text, str) else text
            if isinstance(number, float) and not number.is_integer():
                raise ValueError
            return int(number)
        except (TypeError, ValueError):
            raise UserError(f"{key} expects an integer, got {text!r}") from None
    if annotation is float:
        if isinstance(text, bool):
            raise UserError(f"{key} expects a number, got {text!r}")
        try:
            return float(text)
        except (TypeError, ValueError):
            raise UserError(f"{key} expects a number, got {text!r}") from None
    if annotation is str:
        if not isinstance(text, str):
            raise UserError(f"{key} expects a string, got {text!r}")
        return text
    raise TypeError(f"unsupported config type {annotation!r} for {key}")


def from_dict(cls: type, document: dict, where: str, prefix: str = "") -> Any:
    """Build a config dataclass from nested dicts, checking every key and type."""
    if not isinstance(document, dict):
        raise UserError(f"{where}: section {prefix.rstrip('.') or '(top)'} must be a table")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    values = {}
    for key, value in document.items():
        full = prefix + key
        if key not in known:
            valid = [prefix + name for name in sorted(known)]
            close = difflib.get_close_matches(full, valid, n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            raise UserError(f"{where}: unknown key {full}{hint} Valid keys here: {', '.join(valid)}")
        annotation = hints[key]
        if dataclasses.is_dataclass(annotation):
            values[key] = from_dict(annotation, value, where, prefix=full + ".")
        else:
            values[key] = parse_value(value, annotation, f"{where}: {full}")
    try:
        return cls(**values)  # a section checks its values as it is made
    except UserError as error:
        raise UserError(f"{where}: {error}") from None


def to_dict(config: Any) -> dict:
    """A JSON/TOML-friendly nested dict of a config dataclass (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def to_toml(config: Any, header: str = "") -> str:
    """Write a config dataclass as a TOML document (flat sections, one level deep)."""
    document = to_dict(config)
    lines = [header.rstrip()] if header else []
    scalars = {k: v for k, v in document.items() if not isinstance(v, dict)}
    for key, value in scalars.items():
        lines.append(f"{key} = {_toml_value(value)}")
    for section, table in document.items():
        if isinstance(table, dict):
            lines.append(f"\n[{section}]")
            for key, value in table.items():
                if value is not None:
                    lines.append(f"{key} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def parse_overrides(arguments: list[str]) -> tuple[dict[str, str], list[str]]:
    """Split CLI arguments into ``key=value`` overrides and plain positional words."""
    overrides, positional = {}, []
    for argument in arguments:
        if "=" in argument and not argument.startswith("-"):
            key, _, value = argument.partition("=")
            if not key:
                raise UserError(f"malformed override {argument!r}: expected key=value")
            overrides[key.strip()] = value
        else:
            positional.append(argument)
    return overrides, positional


def recipe_rows() -> list[dict[str, Any]]:
    """Each shipped recipe's name, dataset, epochs and the first comment line of its file."""
    rows = []
    for name in recipe_names():
        recipe = load_recipe(name)
        lines = recipe_path(name).read_text().splitlines()
        about = next((line.lstrip("# ").strip() for line in lines[1:] if line.startswith("#")), "")
        rows.append({"name": name, "dataset": recipe.data.dataset_name, "epochs": recipe.train.epochs, "about": about})
    return rows
