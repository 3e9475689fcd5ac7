"""A stand-in for ICSG3D's unreleased train split, so the paper's ICSG3D column can be reported at all.

The paper released ICSG3D's validation (342) and test (360) splits only. ``icsg3d-standin`` trains on the
built-in cubic prototypes (the same families: rock salt, CsCl, zinc blende, Heusler, perovskite) plus 90 % of
the released validation split, validates on the other 10 %, and tests on the released test split untouched.
Built-in structures whose reduced formula is in the test split are left out of training, so no test
composition is learnt from a generated copy of it. Built once into the data directory from ``icsg3d``.
"""

from __future__ import annotations

import numpy as np

from nesfgen.crystal import Crystal
from nesfgen.data.builtin import builtin_dataset
from nesfgen.data.store import Dataset, data_dir, open_dataset, write_dataset
from nesfgen.errors import UserError

NAME = "icsg3d-standin"
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


def standin_dataset() -> Dataset:
    """``icsg3d-standin`` from the data directory, built (or rebuilt, when ``icsg3d`` changed) on first use.

    Raises:
        UserError: when the paper's ``icsg3d`` has not been imported.
    """
    source = data_dir() / "icsg3d"
    if not (source / "manifest.json").is_file():
        raise UserError(
            f"{NAME} is built from the paper's icsg3d, which is not in the data directory {data_dir()}: import the "
            "paper's released files once with `nesfgen data import PATH/nesf-paper --format paper`"
        )
    icsg3d = open_dataset(source)
    path = data_dir() / NAME
    if (path / "manifest.json").is_file():
        existing = open_dataset(path)
        provenance = existing.manifest.get("provenance", {})
        if provenance.get("version") == VERSION and provenance.get("icsg3d_hash") == icsg3d.content_hash:
            return existing.verify()
    builtin = builtin_dataset()
    splits = build_standin(icsg3d, builtin)
    provenance = {
        "source": "nesfgen.data.standin",
        "version": VERSION,
        "icsg3d_hash": icsg3d.content_hash,
        "builtin": builtin.name,
        "description": (
            f"train: {builtin.name} (all splits, test-split formulas removed) + {1 - HOLDOUT_FRACTION:.0%} of "
            f"ICSG3D's released val split; val: the other {HOLDOUT_FRACTION:.0%}; test: ICSG3D's released test "
            "split. The paper's train split (7194 structures) was not released."
        ),
        "license": icsg3d.manifest.get("provenance", {}).get("license", ""),
    }
    try:
        return write_dataset(path, splits, name=NAME, provenance=provenance, overwrite=path.exists())
    except UserError:
        if (path / "manifest.json").is_file():  # another process wrote it first
            return open_dataset(path).verify()
        raise
