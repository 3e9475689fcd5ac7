"""Typed recipes: frozen dataclasses, TOML recipe files and dotted ``key=value`` overrides."""

from __future__ import annotations

import dataclasses
import difflib
import json
import sys
import types
import typing
from dataclasses import dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any

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


@dataclass(frozen=True)
class DataConfig:
    """Which dataset to train on and which of its splits play which role."""

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
class ModelConfig:
    """Widths and switches of the encoder, the two fields and the lattice heads."""

    latent_size: int = 192
    encoder_position_widths: tuple[int, ...] = (64, 128, 128)
    encoder_species_widths: tuple[int, ...] = (128, 128)
    encoder_mix_width: int = 512
    encoder_head_widths: tuple[int, ...] = (256, 256)
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
class SamplingConfig:
    """Training query grids (Å). "range" is the full width of a local grid."""

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


@dataclass(frozen=True)
class LossConfig:
    """Weights of the four loss terms, and of the KL term of a variational model."""

    position: float = 10.0
    species: float = 0.1
    length: float = 1.0
    angle: float = 1.0
    kl: float = 0.001  # model.variational only: weight of the KL divergence summed over a batch's structures
    kl_warmup_epochs: int = 0  # raise the KL weight linearly to `kl` over this many epochs (0 = full from the start)


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation, schedule, hardware and bookkeeping."""

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
    lattice_refit_epochs: int = 0  # after training, refit the lattice heads on eval-mode latents (0 = off)
    lattice_refit_lr: float = 3e-4


@dataclass(frozen=True)
class EstimatorConfig:
    """The deterministic particle estimator that decodes a latent into a crystal."""

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
    try:
        document = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as error:
        raise UserError(f"recipe file {path} is not valid TOML: {error}") from None
    recipe = from_dict(Recipe, document, where=str(path))
    if "name" not in document:
        recipe = replace(recipe, name=path.stem)
    return apply_overrides(recipe, overrides or {})


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
    return cls(**values)


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
