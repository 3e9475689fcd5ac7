"""The NeSF autoencoder: a PointNet encoder, the position and species fields, and the lattice heads.

Queries are "packed": all query points of a batch in one (Q, 3) tensor with the index of their
structure, so structures with different numbers of atoms need no padding. The latent's share of
each field's first layer is computed once per structure and gathered per query, which is the same
linear layer as concatenating z to every query, at a fraction of the cost.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from nesfgen.config import ModelConfig
from nesfgen.sampling import Atoms, Queries, TensorSet

DEGREES_PER_RADIAN = 180.0 / math.pi

#: Under bf16 autocast on a CPU, matmuls run through oneDNN, which builds a kernel for every new shape.
#: Every batch has its own number of atoms and queries, so without padding each step built them afresh.
ROW_MULTIPLE = 256


class BucketedLinear(nn.Linear):
    """nn.Linear whose input rows are padded with zeros to the next multiple of ROW_MULTIPLE under CPU bf16.

    The padded rows are cut off again before anything else sees them, so outputs and gradients are the
    plain layer's; only the set of matmul shapes becomes small enough for oneDNN to keep its kernels.
    """

    def forward(self, x: Tensor) -> Tensor:
        rows = x.shape[0]
        pad = bucket_padding(rows, x.device)
        if not pad:
            return super().forward(x)
        return super().forward(nn.functional.pad(x, (0, 0, 0, pad)))[:rows]


def bucket_padding(rows: int, device: torch.device) -> int:
    """Rows to add under CPU bf16 autocast (up to the next multiple of ROW_MULTIPLE), else 0.

    Never 0 when padding applies, also for a multiple: torch.compile would compile that case apart.
    """
    if device.type != "cpu" or not torch.is_autocast_enabled("cpu"):
        return 0
    return ROW_MULTIPLE - rows % ROW_MULTIPLE


def mlp(widths: list[int], batch_norm: bool, dropout: float = 0.0, last_activation: bool = True) -> nn.Sequential:
    """Linear layers with BatchNorm + ReLU (+ dropout) after each hidden layer."""
    layers: list[nn.Module] = []
    for index, (width_in, width_out) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(BucketedLinear(width_in, width_out))
        if index < len(widths) - 2 or last_activation:
            if batch_norm:
                layers.append(nn.BatchNorm1d(width_out))
            layers.append(nn.ReLU())
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


class Encoder(nn.Module):
    """PointNet/DeepSets encoder: per-atom MLPs, max pooling, then an MLP with the lattice parameters."""

    def __init__(self, config: ModelConfig, num_species: int) -> None:
        super().__init__()
        self.num_species = num_species
        bn = config.batch_norm
        self.position_mlp = mlp([3, *config.encoder_position_widths], bn)
        self.species_mlp = mlp([num_species, *config.encoder_species_widths], bn)
        joined = config.encoder_position_widths[-1] + config.encoder_species_widths[-1]
        self.mix = mlp([joined, config.encoder_mix_width], bn, config.dropout)
        self.head = nn.Sequential(
            mlp([config.encoder_mix_width + 6, *config.encoder_head_widths], bn, config.dropout),
            BucketedLinear(config.encoder_head_widths[-1], config.latent_size),
        )

    def features(self, atoms: Atoms) -> Tensor:
        """(B, F) pooled features plus lattice parameters: the trunk shared with a variational head."""
        per_atom = self.per_atom(atoms.cart_coords, atoms.species)  # (A, M)
        pooled = per_atom.new_full((atoms.num_structures, per_atom.shape[1]), -torch.inf)
        index = atoms.structure[:, None].expand_as(per_atom)
        pooled = pooled.scatter_reduce(0, index, per_atom, reduce="amax", include_self=True)  # (B, M)
        return torch.cat([pooled, atoms.lengths, atoms.angles], dim=-1)

    def per_atom(self, cart_coords: Tensor, species: Tensor) -> Tensor:
        """(A, M) features of each atom, before pooling: what training compiles of the encoder."""
        one_hot = nn.functional.one_hot(species, self.num_species).to(cart_coords.dtype)
        return self.mix(torch.cat([self.position_mlp(cart_coords), self.species_mlp(one_hot)], dim=-1))

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

    Training computes feature-major, (features, queries): the compiled BatchNorm kernels then reduce
    along contiguous memory, which made fast-lcs6 training steps 5-9 % faster. Decoding computes
    query-major, (queries, features), where eager float32 matmuls and BatchNorm took a fifth less time.
    Both are the same layers, plain nn.Linear and nn.BatchNorm1d, so checkpoints are the usual ones.
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
        if self.training:
            return self._feature_major(points, structure, z)
        q = self.encoding(points)
        h = torch.relu(self.norms[0](self.first_latent(z).index_select(0, structure) + self.first_query(q)))
        q = q.to(h.dtype)  # under bf16 autocast a float32 q would make every concatenation float32
        for layer, norm in zip(self.hidden, self.norms[1:]):
            h = torch.relu(norm(layer(torch.cat([h, q], dim=-1))))
        return self.out(torch.cat([h, q], dim=-1))

    def _feature_major(self, points: Tensor, structure: Tensor, z: Tensor) -> Tensor:
        rows = points.shape[0]
        q = self.encoding(points).T  # (F, Q)
        pad = bucket_padding(rows, points.device)
        if pad:  # zero columns ride along to the output and are cut off there; BatchNorm never counts them
            q, structure = nn.functional.pad(q, (0, pad)), nn.functional.pad(structure, (0, pad))
        counted = rows if pad else None
        # z's share as a matmul with the one-hot of each query's structure (B × Q' values): its backward is
        # a matmul too, where a gather along columns has a scatter along columns as backward, which cost more
        # than all the field's matmuls.
        one_hot = (structure[None, :] == torch.arange(len(z), device=z.device)[:, None]).to(q.dtype)
        latent = self.first_latent(z).T  # (C, B): z's share of the first layer, once per structure
        joined = torch.cat([q, one_hot]).to(latent.dtype)
        written_out = pad and isinstance(self.norms[0], nn.BatchNorm1d)  # BatchNormReLU takes the gradient
        with torch.no_grad() if written_out else contextlib.nullcontext():
            h = torch.cat([self.first_query.weight, latent], dim=1) @ joined
        first = FirstLayer(joined, self.first_query.weight, latent) if written_out else None
        h = _train_batch_norm_relu(self.norms[0], h, counted, first=first)
        q = q.to(h.dtype)
        for layer, norm in zip(self.hidden, self.norms[1:]):
            if pad:
                product = QueryConcatLinear.apply(h, q, layer.weight, layer.bias)  # the bias is added in BatchNorm
                h = _train_batch_norm_relu(norm, product, counted, bias=layer.bias)
            else:
                h = _train_batch_norm_relu(
                    norm, torch.addmm(layer.bias[:, None], layer.weight, torch.cat([h, q])), None
                )
        return torch.addmm(self.out.bias[:, None], self.out.weight, torch.cat([h, q]))[:, :rows].T


class FirstLayer(NamedTuple):
    """A field's first layer, h = [query_weight, latent] @ joined: what its gradient goes to."""

    joined: Tensor  # (F + B, Q'): the query's F features over the one-hot of its structure
    query_weight: Tensor  # (C, F)
    latent: Tensor  # (C, B), z's share


class QueryConcatLinear(torch.autograd.Function):
    """weight @ [h; q], a linear layer of h and the query whose bias is added later (by _train_batch_norm_relu).

    Without the bias, the matmul writes its output once: torch.addmm first filled it with the broadcast bias,
    a (C, Q') copy per layer. Without the input gradient of the query rows, which need none: they made the
    matmul of h's gradient 259 high after a 256-wide layer, which oneDNN ran a fifth slower than 256.
    The bias's gradient is the same as with it added here.
    """

    @staticmethod
    def forward(ctx: Any, h: Tensor, q: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
        joined = torch.cat([h, q])
        ctx.save_for_backward(joined, weight)
        ctx.width = h.shape[0]
        return weight.to(joined.dtype) @ joined

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        joined, weight = ctx.saved_tensors
        grad_h = weight[:, : ctx.width].to(grad.dtype).T @ grad
        return grad_h, None, (grad @ joined.T).to(weight.dtype), grad.sum(1).to(weight.dtype)


def _train_batch_norm_relu(
    norm: nn.Module, h: Tensor, rows: int | None, bias: Tensor | None = None, first: FirstLayer | None = None
) -> Tensor:
    """Training-mode ReLU(BatchNorm(h + bias)) of feature-major h (C, Q'), with statistics over its first ``rows``
    columns.

    The statistics and running-average updates of nn.BatchNorm1d. With padding columns, the variance comes
    from sums shifted by the running mean: one fused pass, without the cancellation of E[x²] - E[x]².
    ``rows=None``: no padding, all columns count. ``bias``: the previous layer's, not yet added; BatchNorm in training
    removes it again, so it only enters the running mean. ``first``: h is that first layer's, computed without
    gradient; the gradient goes to its weights.
    """
    if not isinstance(norm, nn.BatchNorm1d):
        return torch.relu(h if bias is None else h + bias[:, None])
    norm.num_batches_tracked.add_(1)
    if rows is None:  # the native kernel, the fastest without torch.compile
        running = (norm.running_mean, norm.running_var)
        normalized = nn.functional.batch_norm(h[None], *running, norm.weight, norm.bias, True, norm.momentum, norm.eps)
        return torch.relu(normalized[0])
    with torch.no_grad():  # BatchNormReLU's backward carries the gradient through the statistics
        running_mean_of_h = norm.running_mean if bias is None else norm.running_mean - bias
        shifted = h[:, :rows].float() - running_mean_of_h[:, None]
        shifted_mean = shifted.mean(dim=1)
        var = shifted.square().mean(dim=1) - shifted_mean.square()
        mean = shifted_mean + running_mean_of_h  # a new tensor: the running update below leaves it alone
        norm.running_mean.lerp_(mean if bias is None else mean + bias, norm.momentum)
        norm.running_var.lerp_(var * rows / max(rows - 1, 1), norm.momentum)
        inverse_std = torch.rsqrt(var + norm.eps)
    return BatchNormReLU.apply(h, mean, inverse_std, norm.weight, norm.bias, rows, *(first or (None,) * 3))


class BatchNormReLU(torch.autograd.Function):
    """ReLU(γ·(h − mean)·inverse_std + β) over feature-major h whose statistics are given; the backward is
    BatchNorm's full one over the first ``rows`` columns (through the statistics too), zero on padding.

    Written out so that the compiled backward keeps no (C, Q') float32 temporary: inductor's own BatchNorm
    backward stores the ReLU-masked gradient in float32 between its two passes. This one reads h and the
    incoming gradient twice instead and recomputes the mask: compiled fast-lcs6 fields 3-9 % faster.

    In a first layer (the FirstLayer parts given), the gradient goes on to its query weight and to z's share as two
    matmuls, with the query's 3 rows and with the one-hot alone: as one 67-wide matmul, oneDNN took 25-85 % longer
    than for the 64 of a batch; as 3 sums inside this backward's kernel, the kernel took 1.7-2.2× as long.
    """

    @staticmethod
    def forward(
        ctx: Any,
        h: Tensor,
        mean: Tensor,
        inverse_std: Tensor,
        weight: Tensor,
        bias: Tensor,
        rows: int,
        joined: Tensor | None,
        query_weight: Tensor | None,
        latent: Tensor | None,
    ) -> Tensor:
        scale = weight * inverse_std
        shift = bias - mean * scale
        ctx.save_for_backward(h, mean, inverse_std, scale, shift, bias, joined)
        ctx.rows, ctx.features = rows, None if query_weight is None else query_weight.shape[1]
        ctx.query_dtype = None if query_weight is None else query_weight.dtype
        return torch.relu(h * scale[:, None] + shift[:, None]).to(h.dtype)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        h, mean, inverse_std, scale, shift, bias, joined = ctx.saved_tensors
        rows = ctx.rows
        x = h.float()
        # the incoming gradient is 0 on padding (cut off at the field's output), so the sums see real columns only
        masked = torch.where(x * scale[:, None] + shift[:, None] > 0, grad.float(), 0.0)
        grad_bias = masked.sum(1)
        grad_weight = ((masked * x).sum(1) - mean * grad_bias) * inverse_std  # Σ g·x̂
        slope = -scale * inverse_std * grad_weight / rows
        offset = -scale * grad_bias / rows - slope * mean
        # The same mask (up to rounding at exactly 0) written another way, from h − mean: an identical expression
        # would be shared by the compiled graph between the two passes and stored in float32.
        again = torch.where((x - mean[:, None]) * scale[:, None] + bias[:, None] > 0, grad.float(), 0.0)
        grad_h = (again * scale[:, None] + x * slope[:, None] + offset[:, None])[:, :rows].to(h.dtype)
        # zero on padding, as a block after the real columns: a per-element column test cost a tenth of the kernel
        grad_h = torch.cat([grad_h, h.new_zeros(h.shape[0], h.shape[1] - rows)], dim=1)
        if joined is None:
            return grad_h, None, None, grad_weight, grad_bias, None, None, None, None
        grad_query_weight = (grad_h @ joined[: ctx.features].T).to(ctx.query_dtype)
        grad_latent = grad_h @ joined[ctx.features :].T
        return None, None, None, grad_weight, grad_bias, None, None, grad_query_weight, grad_latent


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
