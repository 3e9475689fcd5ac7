"""Several trained NeSFs decoded as one field, so atoms one training misses and another finds are found.

It helps as far as the members fail differently: two YBCO-like fine-tunings at batch sizes 32 and 16 did, two
seeds of one recipe mostly did not (docs/large-cells.md). Each member encodes a structure with its own encoder; the ensemble's latent is
the members' latents side by side, and every output the estimator or a latent fit reads is the members' mean:
nearest-atom vectors, species log-probabilities (a valid set of logits), lattice lengths and angles.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch
from torch import Tensor, nn

from nesfgen.model import NeSF
from nesfgen.sampling import Atoms, Queries

#: Joins the members' checkpoints in one ``checkpoint=`` value: ``runs/fold-3+runs/fold-3-member-1``.
MEMBER_SEPARATOR = "+"
#: the most runs a fold ``cv members=`` and ``results ybco_members=`` train and decode together
MAX_MEMBERS = 8


class NeSFEnsemble(nn.Module):
    """Members' latents concatenated (B, sum of D); their fields and lattice heads averaged."""

    def __init__(self, members: Sequence[NeSF]) -> None:
        super().__init__()
        if len(members) < 2:
            raise ValueError("an ensemble needs at least two members")
        self.members = nn.ModuleList(members)
        self.latent_sizes = [member.config.latent_size for member in members]
        self.config = replace(members[0].config, latent_size=sum(self.latent_sizes))
        self.num_species = members[0].num_species

    def _each(self, z: Tensor) -> list[tuple[NeSF, Tensor]]:
        return list(zip(self.members, z.split(self.latent_sizes, dim=-1)))

    def encode(self, atoms: Atoms) -> Tensor:
        return torch.cat([member.encode(atoms) for member in self.members], dim=-1)

    def forward(self, atoms: Atoms, queries: Queries) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        return self.decode(self.encode(atoms), queries)

    def decode(self, z: Tensor, queries: Queries) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The members' training outputs averaged (species as log-probabilities), so a latent fit sees one field."""
        outputs = [member.decode(part, queries) for member, part in self._each(z)]
        position, species, lengths, angles = zip(*outputs)
        return (
            _mean(position),
            _mean([logits.float().log_softmax(-1) for logits in species]),
            _mean(lengths),
            _mean(angles),
        )

    # The estimator's interface (nesfgen.estimator.StructureField).
    def position(self, points: Tensor, z: Tensor) -> Tensor:
        return _mean([member.position(points, part) for member, part in self._each(z)])

    def species(self, points: Tensor, z: Tensor) -> Tensor:
        return _mean([member.species(points, part).float().log_softmax(-1) for member, part in self._each(z)])

    def lattice(self, z: Tensor) -> tuple[Tensor, Tensor]:
        lengths, angles = zip(*(member.lattice(part) for member, part in self._each(z)))
        return _mean(lengths), _mean(angles)


def _mean(tensors: Sequence[Tensor]) -> Tensor:
    return torch.stack(list(tensors)).mean(0)
