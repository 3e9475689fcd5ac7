"""Command options: the ``key=value`` words of a command parsed into a frozen dataclass.

The same parser as recipe overrides (``config.parse_value``), so a command's typo fails as a recipe's
does, naming the key with a did-you-mean, and each library function receives typed values with its
defaults written once, in its options class.
"""

from __future__ import annotations

import difflib
import typing
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, TypeVar

from nesfgen.config import STATED_SYMPREC, EstimatorConfig, check_symprec, parse_overrides, parse_value
from nesfgen.errors import UserError

T = TypeVar("T")

ESTIMATOR_PREFIX = "estimator."


def parse_options(cls: type[T], arguments: list[str], command: str, **given: Any) -> T:
    """``key=value`` words (and, where the class takes them, plain words) as an instance of ``cls``.

    ``cls`` is a frozen keyword-only dataclass: a field made with :func:`required` must be given; a ``WORDS`` class variable names
    the tuple field that receives the plain words (none: plain words are refused); an ``estimator`` field
    receives the ``estimator.*`` overrides, checked against the estimator's keys here and parsed when the
    checkpoint's own estimator settings are known. ``given``: values the caller parsed already (typer
    arguments).
    """
    values, words = parse_overrides(arguments)
    hints = typing.get_type_hints(cls)
    names = [f.name for f in fields(cls)]
    words_field = getattr(cls, "WORDS", None)
    parsed: dict[str, Any] = dict(given)
    if words:
        if words_field is None:
            raise UserError(f"unexpected argument(s) {' '.join(words)}; nesfgen {command} takes key=value pairs")
        parsed[words_field] = tuple(words)
    estimator = {}
    for key, text in values.items():
        if key.startswith(ESTIMATOR_PREFIX) and "estimator" in names:
            estimator[key] = _estimator_key(key, text)
        elif key in names and key not in ("estimator", words_field, *given):
            parsed[key] = parse_value(text, hints[key], key)
        else:
            valid = sorted(n for n in names if n not in ("estimator", words_field, *given))
            close = difflib.get_close_matches(key, valid, n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            more = ", estimator.*" if "estimator" in names else ""
            raise UserError(f"unknown option {key} for nesfgen {command}{hint or '.'} Valid: {', '.join(valid)}{more}")
    if estimator:
        parsed["estimator"] = estimator
    for f in fields(cls):
        if "required" in f.metadata and f.name not in parsed:
            raise UserError(f.metadata["required"])
    return cls(**parsed)


def recipe_words(arguments: list[str], command: str, extra_keys: tuple[str, ...]) -> tuple[dict, dict]:
    """Dotted recipe overrides, and the values of the command's own ``extra_keys`` (recipe=, out=, ...)."""
    overrides, positional = parse_overrides(arguments)
    if positional:
        raise UserError(
            f"unexpected argument(s) {' '.join(positional)}; nesfgen {command} takes key=value pairs "
            "(recipe overrides: train.epochs=10 ...)"
        )
    return overrides, {key: overrides.pop(key) for key in extra_keys if key in overrides}


def required(message: str) -> Any:
    """A field the command cannot run without; ``message`` says so and what to give."""
    return field(metadata={"required": message})


def _estimator_key(key: str, text: str) -> str:
    known = [f"{ESTIMATOR_PREFIX}{f.name}" for f in fields(EstimatorConfig)]
    if key not in known:
        close = difflib.get_close_matches(key, known, n=1)
        hint = f"; did you mean {close[0]}?" if close else ""
        raise UserError(f"unknown key {key}{hint} Valid keys: {', '.join(known)}")
    return text


@dataclass(frozen=True, kw_only=True)
class DecodeOptions:
    """What every decoding command takes: the model, where it runs, the estimator and symmetrisation.

    ``checkpoint`` None: the command's default model. ``estimator``: ``estimator.KEY`` → text overrides of
    the checkpoint's estimator settings. ``symprec`` (Å) is the tolerance of ``symmetrize``; None: 0.1 Å.
    """

    #: Commands whose symprec= also sets the tolerance of reported space groups take it without symmetrize.
    SYMPREC_ALONE: ClassVar[bool] = False

    checkpoint: str | None = None
    device: str = "cpu"
    symmetrize: bool = False
    symprec: float | None = None
    estimator: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.symprec is not None:
            if not (self.symmetrize or self.SYMPREC_ALONE):
                raise UserError("symprec= is the tolerance of symmetrize=true; add symmetrize=true or drop symprec=")
            check_symprec(self.symprec)

    @property
    def tolerance(self) -> float:
        """The symmetrisation tolerance in Å (symprec=, or the stated 0.1 Å)."""
        return STATED_SYMPREC if self.symprec is None else self.symprec


def comma_list(text: str | None) -> list[str]:
    """``Na, Cl,`` → ``["Na", "Cl"]``; None or blank → ``[]``."""
    return [part.strip() for part in (text or "").split(",") if part.strip()]
