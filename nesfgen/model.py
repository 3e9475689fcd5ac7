"""The NeSF autoencoder: a PointNet encoder, the position and species fields, and the lattice heads.

Queries are "packed": all query points of a batch in one (Q, 3) tensor with the index of their
structure, so structures with different numbers of atoms need no padding. The latent's share of
each field's first layer is computed once per structure and gathered per query, which is the same
linear layer as concatenating z to every query, at a fraction of the cost. The kernels that train the
fields fast on CPUs under bf16 are in nesfgen.kernels.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from nesfgen.config import ModelConfig
from nesfgen.kernels import BucketedLinear, feature_major_forward
from nesfgen.sampling import Atoms, Queries, TensorSet, fractional_coords

DEGREES_PER_RADIAN = 180.0 / math.pi


def mlp(widths: list[int], batch_norm: bool, dropout: float = 0.0) -> nn.Sequential:
    """Linear layers, each followed by BatchNorm + ReLU (+ dropout)."""
    layers: list[nn.Module] = []
    for width_in, width_out in zip(widths[:-1], widths[1:]):
        layers.append(BucketedLinear(width_in, width_out))
        if batch_norm:
            layers.append(nn.BatchNorm1d(width_out))
        layers.append(nn.ReLU())
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


class Encoder(nn.Module):
    """PointNet/DeepSets encoder: per-atom MLPs, max (or max and mean) pooling, then an MLP with the lattice parameters."""

    def __init__(self, config: ModelConfig, num_species: int) -> None:
        super().__init__()
        self.num_species = num_species
        bn = config.batch_norm
        self.pooling = config.encoder_pooling
        self.register_buffer(
            "cell_scales", 2 * math.pi * torch.arange(1, config.encoder_cell_frequencies + 1.0), persistent=False
        )
        self.position_mlp = mlp([3 + 6 * config.encoder_cell_frequencies, *config.encoder_position_widths], bn)
        self.species_mlp = mlp([num_species, *config.encoder_species_widths], bn)
        joined = config.encoder_position_widths[-1] + config.encoder_species_widths[-1]
        self.mix = mlp([joined, config.encoder_mix_width], bn, config.dropout)
        pooled_width = config.encoder_mix_width * len(self.pooling.split("+"))
        self.head = nn.Sequential(
            mlp([pooled_width + 6, *config.encoder_head_widths], bn, config.dropout),
            BucketedLinear(config.encoder_head_widths[-1], config.latent_size),
        )

    def features(self, atoms: Atoms) -> Tensor:
        """(B, F) pooled features plus lattice parameters: the trunk shared with a variational head."""
        per_atom = self.per_atom(self.position_features(atoms), atoms.species)  # (A, M)
        shape = (atoms.num_structures, per_atom.shape[1])
        index = atoms.structure[:, None].expand_as(per_atom)
        pooled = [per_atom.new_full(shape, -torch.inf).scatter_reduce(0, index, per_atom, "amax")]  # (B, M)
        if self.pooling == "max+mean":
            pooled.append(per_atom.new_zeros(shape).scatter_reduce(0, index, per_atom, "mean", include_self=False))
        return torch.cat([*pooled, atoms.lengths, atoms.angles], dim=-1)

    def position_features(self, atoms: Atoms) -> Tensor:
        """(A, 3 + 6K) Cartesian coordinates, then sin/cos(2π k f) of the fractional ones, k = 1..K.

        Periodic in the cell, the sin/cos features give neighbouring atoms across a cell face nearby features,
        and make features that peak at one place in the cell easy for the first layers, which max pooling needs
        to tell apart arrangements of many atoms (the raw coordinates give it mostly the extremes).
        """
        if self.cell_scales.numel() == 0:
            return atoms.cart_coords
        frac, _ = fractional_coords(atoms)
        phases = (frac[:, :, None] * self.cell_scales).flatten(1)  # (A, 3K)
        return torch.cat([atoms.cart_coords, torch.sin(phases), torch.cos(phases)], dim=-1)

    def per_atom(self, position_features: Tensor, species: Tensor) -> Tensor:
        """(A, M) features of each atom, before pooling: what training compiles of the encoder."""
        one_hot = nn.functional.one_hot(species, self.num_species).to(position_features.dtype)
        return self.mix(torch.cat([self.position_mlp(position_features), self.species_mlp(one_hot)], dim=-1))

    def forward(self, atoms: Atoms) -> Tensor:
        return self.head(self.features(atoms))  # (B, D)


class QueryEncoding(nn.Module):
    """The query as given (3 features), or the query followed by sin/cos(2^k π p), k < L (3 + 6L features).

    The paper's encoding has only the sin/cos features. Their longest period is 2 Å, so points 2 Å apart
    look the same and a field cannot tell where in a 6-12 Å cell it is asked (on LCS6Å every trial
    with it failed to learn); keeping the query itself, as NeRF does, makes the encoding one-to-one.
    """

    def __init__(self, enabled: bool, frequencies: int) -> None:
        super().__init__()
        self.enabled = enabled
        self.register_buffer("scales", (2.0 ** torch.arange(frequencies)) * math.pi, persistent=False)
        self.size = 3 + 6 * frequencies if enabled else 3

    def forward(self, points: Tensor) -> Tensor:
        if not self.enabled:
            return points
        angles = (points[:, :, None] * self.scales).flatten(1)  # (Q, 3L)
        return torch.cat([points, torch.sin(angles), torch.cos(angles)], dim=-1)


class Field(nn.Module):
    """An MLP over (query, z) with the query re-injected at the input of every layer.

    Decoding runs the query-major code below, (queries, features): there eager float32 matmuls and BatchNorm
    took a fifth less time. Training runs the same layers feature-major, in kernels.feature_major_forward.
    Both are plain nn.Linear and nn.BatchNorm1d layers, so checkpoints are the usual ones.
    """

    def __init__(
        self, latent_size: int, widths: tuple[int, ...], out_size: int, encoding: QueryEncoding, batch_norm: bool
    ) -> None:
        super().__init__()
        self.encoding = encoding
        q = encoding.size
        self.first_latent = nn.Linear(latent_size, widths[0])  # z's share of layer 1, once per structure
        self.first_query = BucketedLinear(q, widths[0], bias=False)
        self.hidden = nn.ModuleList(BucketedLinear(w_in + q, w_out) for w_in, w_out in zip(widths[:-1], widths[1:]))
        self.out = BucketedLinear(widths[-1] + q, out_size)
        self.norms = nn.ModuleList(nn.BatchNorm1d(w) if batch_norm else nn.Identity() for w in widths)

    def forward(self, points: Tensor, structure: Tensor, z: Tensor) -> Tensor:
        """points (Q, 3), structure (Q,) index into z (B, D) -> (Q, out_size)."""
        q = self.encoding(points)  # (Q, F)
        if self.training:
            return feature_major_forward(self, q, structure, z)
        h = torch.relu(self.norms[0](self.first_latent(z).index_select(0, structure) + self.first_query(q)))
        q = q.to(h.dtype)  # under bf16 autocast a float32 q would make every concatenation float32
        for layer, norm in zip(self.hidden, self.norms[1:]):
            h = torch.relu(norm(layer(torch.cat([h, q], dim=-1))))
        return self.out(torch.cat([h, q], dim=-1))


class LatticeHead(nn.Module):
    """Two small MLPs from z: lengths (Å) and angles (radians)."""

    def __init__(self, latent_size: int, hidden: int) -> None:
        super().__init__()
        self.lengths = nn.Sequential(nn.Linear(latent_size, hidden), nn.ReLU(), nn.Linear(hidden, 3))
        self.angles = nn.Sequential(nn.Linear(latent_size, hidden), nn.ReLU(), nn.Linear(hidden, 3))

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        # Always float32, also under bf16 autocast in training: bf16 steps are 0.45° for an angle near 90°
        # and 0.03 Å for a 6 Å length, coarser than the errors the heads are trained to reach. They are tiny.
        with torch.autocast(z.device.type, enabled=False):
            z = z.float()
            return self.lengths(z), self.angles(z)


class NeSF(nn.Module):
    """Encoder, position field, species field and lattice heads, with the estimator's field interface."""

    def __init__(self, config: ModelConfig, num_species: int) -> None:
        super().__init__()
        self.config = config
        self.num_species = num_species
        encoding = QueryEncoding(config.positional_encoding, config.encoding_frequencies)
        self.encoder = Encoder(config, num_species)
        bn = config.field_batch_norm
        self.position_field = Field(config.latent_size, config.position_widths, 3, encoding, bn)
        self.species_field = Field(config.latent_size, config.species_widths, num_species, encoding, bn)
        self.lattice_head = LatticeHead(config.latent_size, config.lattice_hidden)

    def encode(self, atoms: Atoms) -> Tensor:
        return self.encoder(atoms)

    #: the weights indexed by species, and along which axis: the encoder's one-hot input, the species field's output
    SPECIES_AXES = {"encoder.species_mlp.0.weight": 1, "species_field.out.weight": 0, "species_field.out.bias": 0}

    def forward(self, atoms: Atoms, queries: Queries) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Training outputs: position (Q, 3), species logits (S, K), lengths (B, 3) Å, angles (B, 3) rad."""
        return self.decode(self.encode(atoms), queries)

    def decode(self, z: Tensor, queries: Queries) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The training outputs of latents z (B, D), which a variational model samples instead of encoding."""
        position = self.position_field(queries.position_points, queries.position_structure, z)
        species = self.species_field(queries.species_points, queries.species_structure, z)
        lengths, angles = self.lattice_head(z)
        return position, species, lengths, angles

    # The estimator's interface: points (B, P, 3) for every structure of z (B, D).
    def position(self, points: Tensor, z: Tensor) -> Tensor:
        return self._grid_call(self.position_field, points, z)

    def species(self, points: Tensor, z: Tensor) -> Tensor:
        return self._grid_call(self.species_field, points, z)

    def lattice(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """Lengths (B, 3) Å and angles (B, 3) degrees."""
        lengths, angles = self.lattice_head(z)
        return lengths, angles * DEGREES_PER_RADIAN

    @staticmethod
    def _grid_call(field: Field, points: Tensor, z: Tensor) -> Tensor:
        count, per, _ = points.shape
        structure = torch.arange(count, device=points.device).repeat_interleave(per)
        return field(points.reshape(-1, 3), structure, z).reshape(count, per, -1)


@torch.no_grad()
def encode_all(model: NeSF, tensors: TensorSet, batch_size: int = 256) -> Tensor:
    """(S, D) latents of every structure of a split, in eval mode: the latents decoding works from."""
    model.eval()
    order = torch.arange(len(tensors))
    return torch.cat([model.encode(tensors.batch(chunk)) for chunk in order.split(batch_size)])


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
