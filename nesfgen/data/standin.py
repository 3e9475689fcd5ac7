"""A stand-in for ICSG3D's unreleased train split, so the paper's ICSG3D column can be reported at all.

The paper released ICSG3D's validation (342) and test (360) splits only. ``icsg3d-standin`` trains on the
built-in cubic prototypes (the same families: rock salt, CsCl, zinc blende, Heusler, perovskite) plus 90 % of
the released validation split, validates on the other 10 %, and tests on the released test split untouched.
Built-in structures whose reduced formula is in the test split are left out of training, so no test
composition is learnt from a generated copy of it. Built once into the data directory from ``icsg3d``.

``lcs6-minus-icsg3d`` is LCS6Å without every structure whose reduced formula the stand-in validates or tests on:
both datasets come from the Materials Project, and 112 of ICSG3D's 360 test structures are LCS6Å training
structures, so a model pre-trained on LCS6Å for the ICSG3D column must not have seen them.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from nesfgen.crystal import Crystal
from nesfgen.data.builtin import builtin_dataset
from nesfgen.data.store import Dataset, data_dir, open_dataset, write_dataset
from nesfgen.errors import UserError

NAME = "icsg3d-standin"
PRETRAINING_NAME = "lcs6-minus-icsg3d"
#: bump when the recipe of the stand-in changes, so an older copy is rebuilt
VERSION = 1
#: share of the released validation split held out to validate on (the rest is trained on)
HOLDOUT_FRACTION = 0.1
SEED = 0


def build_standin(icsg3d: Dataset, builtin: Dataset) -> dict[str, list[Crystal]]:
    """The stand-in's splits from the released ICSG3D splits and the built-in dataset."""
    released_val, test = icsg3d.load("val"), icsg3d.load("test")
    order = np.random.default_rng(SEED).permutation(len(released_val))
    held = set(order[: round(HOLDOUT_FRACTION * len(released_val))].tolist())
    test_formulas = {crystal.reduced_formula for crystal in test}
    generated = [
        crystal
        for split in builtin.split_names
        for crystal in builtin.load(split)
        if crystal.reduced_formula not in test_formulas
    ]
    return {
        "train": generated + [released_val[i] for i in range(len(released_val)) if i not in held],
        "val": [released_val[i] for i in sorted(held)],
        "test": list(test),
    }


def build_pretraining(lcs6: Dataset, standin: Dataset) -> dict[str, list[Crystal]]:
    """LCS6Å's splits without the formulas of the stand-in's validation and test splits."""
    held_out = {crystal.reduced_formula for split in ("val", "test") for crystal in standin.load(split)}
    return {
        split: [crystal for crystal in lcs6.load(split) if crystal.reduced_formula not in held_out]
        for split in lcs6.split_names
    }


def standin_dataset() -> Dataset:
    """``icsg3d-standin`` from the data directory, built (or rebuilt, when ``icsg3d`` changed) on first use.

    Raises:
        UserError: when the paper's ``icsg3d`` has not been imported.
    """
    icsg3d = _imported("icsg3d", NAME)
    builtin = builtin_dataset()
    description = (
        f"train: {builtin.name} (all splits, test-split formulas removed) + {1 - HOLDOUT_FRACTION:.0%} of "
        f"ICSG3D's released val split; val: the other {HOLDOUT_FRACTION:.0%}; test: ICSG3D's released test "
        "split. The paper's train split (7194 structures) was not released."
    )
    provenance = {
        "icsg3d_hash": icsg3d.content_hash,
        "builtin": builtin.name,
        "license": icsg3d.manifest.get("provenance", {}).get("license", ""),
    }
    return _derived(NAME, provenance, description, lambda: build_standin(icsg3d, builtin))


def pretraining_dataset() -> Dataset:
    """``lcs6-minus-icsg3d`` from the data directory, built (or rebuilt, when a source changed) on first use.

    Raises:
        UserError: when the paper's ``lcs6`` or ``icsg3d`` has not been imported.
    """
    lcs6 = _imported("lcs6", PRETRAINING_NAME)
    standin = standin_dataset()
    description = f"LCS6A's splits without every reduced formula of {NAME}'s val and test splits"
    provenance = {
        "lcs6_hash": lcs6.content_hash,
        "standin_hash": standin.content_hash,
        "license": lcs6.manifest.get("provenance", {}).get("license", ""),
    }
    return _derived(PRETRAINING_NAME, provenance, description, lambda: build_pretraining(lcs6, standin))


def _imported(name: str, needed_by: str) -> Dataset:
    source = data_dir() / name
    if not (source / "manifest.json").is_file():
        raise UserError(
            f"{needed_by} is built from the paper's {name}, which is not in the data directory {data_dir()}: import "
            "the paper's released files once with `nesfgen data import PATH/nesf-paper --format paper`"
        )
    return open_dataset(source)


def _derived(
    name: str, provenance: dict[str, str], description: str, build: Callable[[], dict[str, list[Crystal]]]
) -> Dataset:
    """The dataset ``name`` as last built from the same sources, else built now and written atomically."""
    provenance = {"source": "nesfgen.data.standin", "version": VERSION, **provenance, "description": description}
    path = data_dir() / name
    if (current := _current(path, provenance)) is not None:
        return current
    splits = build()
    try:
        return write_dataset(path, splits, name=name, provenance=provenance, overwrite=path.exists())
    except UserError:
        if (current := _current(path, provenance)) is not None:  # another process wrote it first
            return current
        raise


def _current(path: Path, provenance: dict[str, str]) -> Dataset | None:
    """The dataset at ``path`` if it was built by this version from the same sources, else None."""
    if not (path / "manifest.json").is_file():
        return None
    existing = open_dataset(path)
    kept = existing.manifest.get("provenance", {})
    same = all(kept.get(key) == value for key, value in provenance.items() if key not in ("description", "license"))
    return existing.verify() if same else None


#: the derived datasets by name, each built on first use
DERIVED: dict[str, Callable[[], Dataset]] = {NAME: standin_dataset, PRETRAINING_NAME: pretraining_dataset}
