"""``nesfgen tune``'s options: which study, what to do with it (run, show, export) and the keys of each."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from functools import cached_property
from pathlib import Path
from typing import ClassVar

from nesfgen.config import parse_value
from nesfgen.errors import UserError, require
from nesfgen.tune.study import StudySpec, load_study, study_names

#: the keys each action takes
ACTION_KEYS = {
    "run": {"study", "n_trials", "timeout", "storage", "worker"},
    "show": {"study", "storage", "limit"},
    "export": {"study", "storage", "out", "trial"},
}
UNITS = {"s": 1, "m": 60, "h": 3600}


@dataclass(frozen=True, kw_only=True)
class TuneOptions:
    """A study and an action: run it (the default), show its leaderboard, or export a trial as a recipe."""

    WORDS: ClassVar[str] = "words"

    words: tuple[str, ...] = ()
    study: str | None = None
    n_trials: int | None = None
    timeout: str | None = None
    storage: str | None = None
    worker: int | None = None
    limit: int | None = None
    out: str | None = None
    trial: int | None = None

    def __post_init__(self) -> None:
        if len(self.words) > 1 or (self.words and self.words[0] not in ("show", "export")):
            raise UserError(
                f"unexpected argument(s) {' '.join(self.words)}; nesfgen tune takes key=value pairs and show or export"
            )
        allowed = ACTION_KEYS[self.action]
        for f in fields(self):
            if f.name != "words" and getattr(self, f.name) is not None and f.name not in allowed:
                raise UserError(
                    f"unknown option {f.name} for nesfgen tune {self.action}; valid: {', '.join(sorted(allowed))}"
                )
        if self.study is None:
            raise UserError(f"study=NAME is required; shipped studies: {', '.join(study_names())} (or a .toml path)")
        require(self.n_trials is None or self.n_trials >= 1, "n_trials", self.n_trials, "at least 1")
        require(self.worker is None or self.worker >= 0, "worker", self.worker, "0 or more, one number per worker")
        require(self.limit is None or self.limit >= 1, "limit", self.limit, "at least 1")
        require(self.trial is None or self.trial >= 0, "trial", self.trial, "a trial number (0 or more)")
        parse_timeout(self.timeout)  # a bad timeout is refused with the other options, not when the study starts

    @property
    def action(self) -> str:
        return self.words[0] if self.words else "run"

    @cached_property
    def study_spec(self) -> StudySpec:
        return load_study(self.study)

    @property
    def out_path(self) -> Path | None:
        return Path(self.out) if self.out else None

    @property
    def timeout_seconds(self) -> float | None:
        return parse_timeout(self.timeout)


def parse_timeout(text: str | None) -> float | None:
    """``3600``, ``90m`` or ``2h`` as seconds (None: no time limit)."""
    if text is None:
        return None
    unit = text[-1:] if text[-1:] in UNITS else "s"
    number = parse_value(text.removesuffix(unit) if text[-1:] in UNITS else text, float, "timeout (e.g. 3600, 90m, 2h)")
    if not math.isfinite(number) or number <= 0:
        raise UserError(f"timeout={text}: expected a positive, finite duration (e.g. 3600, 90m, 2h)")
    return number * UNITS[unit]
