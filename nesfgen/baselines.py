"""The rows every generator is read against: the held-out test split scored as if it were samples
(the ceiling: what real crystals score), training structures drawn as if they were samples (what a
generator that reproduced the training distribution exactly would score), and random symmetric crystals
with training-set compositions built by pyxtal (the floor: what symmetry and chemistry alone score)."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from nesfgen.crystal import Crystal
from nesfgen.data.store import CrystalSet
from nesfgen.generative_metrics import Reference, element_counts, score
from nesfgen.progress import Progress

#: space groups pyxtal is asked for before a composition is given up (a None sample)
SPACE_GROUP_TRIES = 20


def random_symmetric_crystals(
    train: CrystalSet, n: int, seed: int, progress: Progress | None = None
) -> list[Crystal | None]:
    """``n`` pyxtal crystals: each takes the composition of a random training structure and a random space
    group (2-230) whose Wyckoff positions can hold it; None where SPACE_GROUP_TRIES groups all fail."""
    from pyxtal import pyxtal

    rng = np.random.default_rng(seed)
    crystals: list[Crystal | None] = []
    for index in range(n):
        pick = int(rng.integers(len(train)))
        counts = element_counts(train.atomic_numbers[train.offsets[pick] : train.offsets[pick + 1]])
        crystal = None
        for _ in range(SPACE_GROUP_TRIES):
            group = int(rng.integers(2, 231))
            generator = pyxtal()
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    generator.from_random(
                        3, group, list(counts), list(counts.values()), random_state=int(rng.integers(2**31))
                    )
            except Exception:  # pyxtal raises its own kinds when the composition does not fit the group
                continue
            if generator.valid:
                structure = generator.to_pymatgen()
                crystal = Crystal.create(
                    structure.lattice.abc,
                    structure.lattice.angles,
                    atomic_numbers=[site.specie.Z for site in structure],
                    frac_coords=structure.frac_coords % 1.0,  # pyxtal leaves some sites outside the cell
                    id=f"random-{index:04d}",
                )
                break
        crystals.append(crystal)
        if progress:
            progress(index + 1, n)
    return crystals


def training_draws(train: CrystalSet, n: int, seed: int) -> list[Crystal]:
    """``n`` training structures drawn with replacement (seeded), as the default sampler draws its conditions."""
    picks = np.random.default_rng(seed).integers(len(train), size=n)
    return [train[int(pick)] for pick in picks]


def reference_rows(
    reference: Reference,
    n: int,
    seed: int,
    progress: Progress | None = None,
    held_out: str = "test",
    reconstructed: list[Crystal | None] | None = None,
) -> tuple[dict[str, Any], dict[str, list[Crystal | None]]]:
    """The ceiling (the held-out split, named ``held_out``, as samples; its coverage is 100 % by
    construction, being its own reference) and the floor (n random symmetric crystals), scored like any
    generator. ``reconstructed``: the held-out split encoded and decoded by the sampling model, a row
    that shows what decoding alone costs, so a generator's gap to it is the prior's. ``train_split_draws``
    (n training structures) bounds what any generator of the training distribution can reach: its coverage
    of the held-out split (novelty 0 by construction).
    Returns the rows and the crystals of each row but the training draws (to be written, relaxed, screened
    like samples; training structures are not new candidates)."""
    crystals: dict[str, list[Crystal | None]] = {}
    if reference.test is not None:
        crystals[f"{held_out}_split"] = [reference.test[i] for i in range(len(reference.test))]
        if reconstructed is not None:
            crystals[f"{held_out}_split_reconstructed"] = reconstructed
    crystals["random_symmetric"] = random_symmetric_crystals(reference.train, n, seed, progress)
    rows = {name: score(members, reference)[1] for name, members in crystals.items()}
    rows["train_split_draws"] = score(training_draws(reference.train, n, seed), reference)[1]
    return rows, crystals
