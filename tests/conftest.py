"""Shared fixtures: tiny crystals by formula, the paper-data folder, a seeded RNG."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from nesfgen.crystal import Crystal


def rock_salt(a: float = 5.64, cation: int = 11, anion: int = 17, id: str = "NaCl") -> Crystal:
    base = np.array([[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    frac = np.concatenate([base, (base + 0.5) % 1.0])
    return Crystal.create([a] * 3, [90] * 3, atomic_numbers=[cation] * 4 + [anion] * 4, frac_coords=frac, id=id)


def zinc_blende(a: float = 5.41, cation: int = 30, anion: int = 16, id: str = "ZnS") -> Crystal:
    base = np.array([[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    frac = np.concatenate([base, base + 0.25])
    return Crystal.create([a] * 3, [90] * 3, atomic_numbers=[cation] * 4 + [anion] * 4, frac_coords=frac, id=id)


def cesium_chloride(a: float = 4.12, id: str = "CsCl") -> Crystal:
    return Crystal.create([a] * 3, [90] * 3, atomic_numbers=[55, 17], frac_coords=[[0, 0, 0], [0.5, 0.5, 0.5]], id=id)


def perovskite(a: float = 3.905, id: str = "SrTiO3") -> Crystal:
    frac = [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]]
    return Crystal.create([a] * 3, [90] * 3, atomic_numbers=[38, 22, 8, 8, 8], frac_coords=frac, id=id)


def monoclinic(id: str = "mono") -> Crystal:
    return Crystal.create(
        [4.1, 5.3, 4.7], [90, 103.5, 90], atomic_numbers=[12, 8, 8], frac_coords=[[0.1, 0.2, 0.3], [0.6, 0.7, 0.2], [0.4, 0.1, 0.8]], id=id
    )


TINY = {"NaCl": rock_salt, "ZnS": zinc_blende, "CsCl": cesium_chloride, "SrTiO3": perovskite, "mono": monoclinic}


@pytest.fixture
def tiny_crystals() -> dict[str, Crystal]:
    """A few small textbook crystals by formula."""
    return {name: make() for name, make in TINY.items()}


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture
def paper_data() -> Path:
    """The paper's released datasets (NESFGEN_PAPER_DATA); tests using this skip when absent."""
    root = os.environ.get("NESFGEN_PAPER_DATA")
    if not root or not Path(root).is_dir():
        pytest.skip("paper datasets not available: set NESFGEN_PAPER_DATA to the nesf-paper folder")
    return Path(root)
