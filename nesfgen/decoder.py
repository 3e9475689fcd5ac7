"""The one decode pipeline: a trained model with its estimator settings and symmetrisation.

Every command that turns latents into crystals (evaluate, reconstruct, sample, interpolate, bench)
goes through :class:`Decoder`, so the model is loaded, the estimator configured, the species
constrained and the structures symmetrised the same way everywhere.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch
from torch import Tensor

from nesfgen.checkpoint import DEFAULT_MODEL, TrainedModel, load_model
from nesfgen.config import EstimatorConfig, apply_overrides
from nesfgen.crystal import Crystal
from nesfgen.data.names import resolve_dataset
from nesfgen.data.store import CrystalSet
from nesfgen.errors import UserError
from nesfgen.estimator import Decoded, StructureField, constrain_species, estimate
from nesfgen.model import encode_all
from nesfgen.options import DecodeOptions
from nesfgen.progress import Progress
from nesfgen.sampling import TensorSet
from nesfgen.symmetry import STATED_SYMPREC, check_symprec, symmetrize_decoded

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SpeciesConstraint:
    """Decoded species restricted to ``allowed`` atomic numbers (empty: any), with an exact ``composition``
    and atom count (``num_atoms``) where given. ``fill``: atoms the estimator's clusters cannot supply are
    added where the position field marks them (:func:`nesfgen.estimator.fill_from_field`)."""

    allowed: tuple[int, ...]
    composition: Mapping[int, float] | None = None
    num_atoms: int | None = None
    fill: bool = True


@dataclass
class Decoding:
    """One batch of latents decoded: the estimator's structures and the crystals made of them.

    ``crystals`` are symmetrised when the decoder symmetrises (those where that fails are kept as
    decoded, marked in ``unsymmetrized``); None where nothing valid was decoded.
    """

    raw: list[Decoded]
    crystals: list[Crystal | None]
    unsymmetrized: list[bool]

    @property
    def symmetrize_failed(self) -> int:
        return sum(self.unsymmetrized)


class Decoder:
    """Latents in, crystals out: a structure field, its box and species table, estimator settings, symmetrisation."""

    def __init__(
        self,
        field: StructureField,
        box: np.ndarray,
        species_table: Sequence[int],
        config: EstimatorConfig,
        symmetrize: bool = False,
        symprec: float = STATED_SYMPREC,
        trained: TrainedModel | None = None,
    ) -> None:
        self.field = field
        self.box = box
        self.species_table = list(species_table)
        self.config = config
        self.symmetrize = symmetrize
        self.symprec = check_symprec(symprec) if symmetrize else symprec
        self.trained = trained

    @classmethod
    def load(cls, options: DecodeOptions, default: str | None = None) -> Decoder:
        """The model of ``options.checkpoint`` (else ``default``, else the shipped one) with the options' settings."""
        return cls.of(load_model(options.checkpoint or default or DEFAULT_MODEL, options.device), options)

    @classmethod
    def of(cls, trained: TrainedModel, options: DecodeOptions) -> Decoder:
        """A loaded model with the options' estimator overrides and symmetrisation."""
        config = estimator_config(trained, options.estimator)
        return cls(
            trained.model, trained.box, trained.species_table, config, options.symmetrize, options.tolerance, trained
        )

    @property
    def settings(self) -> dict[str, Any]:
        """The estimator settings, for a summary."""
        return {f.name: getattr(self.config, f.name) for f in fields(self.config)}

    def encode(self, crystals: CrystalSet) -> Tensor:
        """(S, D) eval-mode latents of the model this decoder holds."""
        if self.trained is None:
            raise ValueError("this decoder holds no trained model to encode with")
        return encode(self.trained, crystals)

    def decode(
        self,
        z: Tensor,
        ids: Sequence[str],
        progress: Progress | None = None,
        species: SpeciesConstraint | Sequence[SpeciesConstraint | None] | None = None,
    ) -> Decoding:
        """Decode latents z (B, D) into crystals named ``ids``, under one species constraint for all or one each."""
        if isinstance(self.field, torch.nn.Module):
            z = z.to(next(self.field.parameters()).device)
        raw = estimate(self.field, z, self.box, self.species_table, self.config, progress)
        each = [species] * len(raw) if species is None or isinstance(species, SpeciesConstraint) else list(species)
        for b, constraint in enumerate(each):
            if constraint is not None:
                raw[b] = constrain_species(
                    self.field,
                    z[b : b + 1],
                    raw[b : b + 1],
                    self.species_table,
                    constraint.allowed,
                    constraint.composition,
                    self.config,
                    constraint.num_atoms,
                    constraint.fill,
                )[0]
        crystals = [result.to_crystal(id) for id, result in zip(ids, raw)]
        failed = [False] * len(crystals)
        if self.symmetrize:
            crystals, failed = symmetrize_decoded(crystals, self.symprec)
        return Decoding(raw, crystals, failed)


def estimator_config(trained: TrainedModel | None, overrides: Mapping[str, str]) -> EstimatorConfig:
    """A checkpoint's estimator settings (the defaults without one) with ``estimator.KEY`` overrides."""
    config = trained.recipe.estimator if trained else EstimatorConfig()
    stripped = {}
    for key, value in overrides.items():
        if not key.startswith("estimator."):
            raise UserError(f"unknown option {key}; only estimator.* overrides are taken here, e.g. estimator.steps=32")
        stripped[key.removeprefix("estimator.")] = value
    try:
        return apply_overrides(config, stripped)
    except UserError as error:
        raise UserError(f"{error} (as estimator.KEY)") from None


def encode(trained: TrainedModel, crystals: CrystalSet, batch_size: int = 256) -> Tensor:
    """(S, D) latents of every structure of a split, in eval mode; warns about inputs unlike the training data."""
    warn_outside_training(trained, crystals)
    device = next(trained.model.parameters()).device
    return encode_all(trained.model, TensorSet(crystals, trained.species_table, device), batch_size)


def training_atom_range(trained: TrainedModel) -> tuple[int, int] | None:
    """Fewest and most atoms per cell the model was trained on: stored in the checkpoint since issue 30,
    else counted in its training split when that dataset is in the data directory unchanged."""
    if trained.atoms_per_cell:
        return trained.atoms_per_cell
    try:
        dataset = resolve_dataset(trained.recipe.data.dataset_name)  # as the recipe named it when training
        if dataset.content_hash != trained.dataset_hash:
            return None
        counts = dataset.load(trained.recipe.data.train_split).num_atoms
    except (UserError, OSError, ValueError, KeyError):
        return None  # without its training data the box alone is checked
    return int(counts.min()), int(counts.max())


def warn_outside_training(trained: TrainedModel, crystals: CrystalSet) -> list[str]:
    """Log one warning line when inputs have more or fewer atoms per cell than the model's training data, or
    atoms beyond the box its particles span: those decode to nonsense. Returns the offending ids."""
    margin = trained.recipe.estimator.particle_interval  # the particle grid reaches one interval past the box
    low, high = trained.box[0] - margin, trained.box[1] + margin
    atom_range = training_atom_range(trained)
    offending, example = [], ""
    for index, count in enumerate(crystals.num_atoms):
        coords = crystals.cart_coords[crystals.offsets[index] : crystals.offsets[index + 1]]
        beyond = bool(np.any(coords < low) or np.any(coords > high))
        unseen = atom_range is not None and not atom_range[0] <= count <= atom_range[1]
        if beyond or unseen:
            offending.append(crystals.ids[index])
            if not example:
                extent = np.round(coords.max(axis=0), 1).tolist() if len(coords) else []
                example = f"{crystals.ids[index]} has {int(count)} atoms reaching {extent} Å"
    if offending:
        atoms = f", {atom_range[0]}-{atom_range[1]} atoms per cell" if atom_range else ""
        log.warning(
            "%d of %d inputs lie outside the training data of %s (atoms within %s Å%s), e.g. %s; "
            "their decodes are unreliable",
            len(offending),
            len(crystals),
            trained.path,
            np.round(trained.box, 1).tolist(),
            atoms,
            example,
        )
    return offending
