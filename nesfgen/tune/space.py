"""The search space: dotted recipe keys with a range or choices, each tried on the recipe when the study loads."""

from __future__ import annotations

import typing
from dataclasses import dataclass
from typing import Any

import optuna

from nesfgen.config import Recipe, apply_overrides, from_dict, to_dict
from nesfgen.errors import UserError


@dataclass(frozen=True)
class Param:
    """One searched recipe key: an int or float range, or a list of choices."""

    key: str
    kind: str  # int | float | categorical
    low: float = 0.0
    high: float = 0.0
    step: float | None = None
    log: bool = False
    choices: tuple[Any, ...] = ()

    def suggest(self, trial: optuna.Trial) -> Any:
        if self.kind == "int":
            return trial.suggest_int(self.key, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        if self.kind == "float":
            return trial.suggest_float(self.key, self.low, self.high, step=self.step, log=self.log)
        return trial.suggest_categorical(self.key, self.choices)


@dataclass(frozen=True)
class SpaceRange:
    """A range entry of [space]: ``{ low = .., high = .. }``, with ``step`` and ``log`` optional."""

    low: float | None = None  # required, with high: checked after the keys, so a typo gets its did-you-mean
    high: float | None = None
    step: float | None = None
    log: bool = False


def flatten(table: dict, prefix: str = "") -> list[tuple[str, Any]]:
    """``{"train": {"lr": x}}`` and ``{"train.lr": x}`` both into ``[("train.lr", x)]``; a range or choice table is a leaf."""
    items = []
    for key, value in table.items():
        if isinstance(value, dict) and not value.keys() & {"low", "high", "choices"}:
            items += flatten(value, f"{prefix}{key}.")
        else:
            items.append((prefix + key, value))
    return items


def override_text(value: Any) -> Any:
    """TOML lists become the comma-separated text that recipe overrides parse (and Optuna can store)."""
    if isinstance(value, list):
        return ",".join(str(item) for item in value)
    return value


def _field_type(recipe: Recipe, key: str) -> Any:
    """The annotated type of a dotted recipe key, ``int | None`` unwrapped to ``int``."""
    obj: Any = recipe
    annotation: Any = None
    for part in key.split("."):
        annotation = typing.get_type_hints(type(obj))[part]
        obj = getattr(obj, part)
    arguments = typing.get_args(annotation)
    if type(None) in arguments:
        return next(a for a in arguments if a is not type(None))
    return annotation


def parse_param(key: str, value: Any, recipe: Recipe, where: str) -> Param:
    """A search-space entry: ``{low, high[, log, step]}``, ``{choices = [...]}`` or a bare list of choices."""
    if isinstance(value, list):
        value = {"choices": value}
    if not isinstance(value, dict):
        raise UserError(
            f"{where}: space {key} must be a range {{ low = .., high = .. }} or a list of choices, got {value!r}"
        )

    def check(candidate: Any) -> None:
        try:
            apply_overrides(recipe, {key: candidate})
        except UserError as error:
            raise UserError(f"{where}: space: {error}") from None

    if "choices" in value:
        if value.keys() - {"choices"}:
            raise UserError(f"{where}: space {key} gives choices; low, high, log and step belong to ranges")
        choices = tuple(override_text(choice) for choice in value["choices"])
        if not choices:
            raise UserError(f"{where}: space {key} has no choices")
        for choice in choices:
            check(choice)
        return Param(key, "categorical", choices=choices)
    bounds = from_dict(SpaceRange, value, where, prefix=f"space.{key}.")
    if bounds.low is None or bounds.high is None:
        raise UserError(f"{where}: space {key} needs both low and high (or choices = [...])")
    try:
        annotation = _field_type(recipe, key)
    except (KeyError, AttributeError):
        check(bounds.low)  # raises the recipe's unknown-key message, with the closest valid key
        raise
    if annotation not in (int, float):
        raise UserError(f"{where}: space {key} is not a number setting; give choices = [...] instead of low/high")
    check(bounds.low)
    check(bounds.high)
    kind = "int" if annotation is int else "float"
    param = Param(key, kind, low=annotation(bounds.low), high=annotation(bounds.high), step=bounds.step, log=bounds.log)
    try:
        if kind == "int":
            optuna.distributions.IntDistribution(int(param.low), int(param.high), log=param.log, step=param.step or 1)
        else:
            optuna.distributions.FloatDistribution(param.low, param.high, log=param.log, step=param.step)
    except ValueError as error:
        raise UserError(f"{where}: space {key}: {error}") from None
    return param


def baseline_values(recipe: Recipe, space: tuple[Param, ...], where: str) -> dict[str, Any]:
    """The starting recipe's values of the searched keys, so the search is measured against it.

    Raises:
        UserError: if a value lies outside its search space (Optuna could not record it as a trial).
    """
    values: dict[str, Any] = {}
    for param in space:
        node: Any = to_dict(recipe)
        for part in param.key.split("."):
            node = node[part]
        value = override_text(node)
        inside = value in param.choices if param.kind == "categorical" else param.low <= value <= param.high
        if not inside:
            raise UserError(
                f"{where}: baseline = true, but the recipe's {param.key} = {value!r} lies outside its search space; "
                "widen the space or drop baseline"
            )
        values[param.key] = value
    return values
