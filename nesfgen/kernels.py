"""CPU bf16 training kernels of the fields: the same layers as nn.Linear and nn.BatchNorm1d, computed faster.

They exist for speed alone: under bf16 autocast on a CPU, oneDNN builds a matmul kernel for every new shape, and
inductor's own BatchNorm backward keeps float32 temporaries; each of them cost a noticeable share of a training
step (the figures are in the docstrings below). Outputs, gradients and running statistics are those of the plain
layers, and so are the parameter names: checkpoints do not know these kernels exist.
"""

from __future__ import annotations

import contextlib
from typing import Any, NamedTuple, Protocol

import torch
from torch import Tensor, nn

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


class FieldLayers(Protocol):
    """The layers of a model.Field: z's and the query's share of the first layer, the hidden layers, the output."""

    first_latent: nn.Linear
    first_query: nn.Linear
    hidden: nn.ModuleList
    out: nn.Linear
    norms: nn.ModuleList  # nn.BatchNorm1d or nn.Identity after the first and each hidden layer


def feature_major_forward(field: FieldLayers, q: Tensor, structure: Tensor, z: Tensor) -> Tensor:
    """A field's training forward, computed feature-major: (features, queries).

    The compiled BatchNorm kernels then reduce along contiguous memory, which made fast-lcs6 training steps
    5-9 % faster than the query-major layout that decoding uses.

    Args:
        field: the field's layers.
        q: (Q, F) encoded query points.
        structure: (Q,) index of each query's structure into z.
        z: (B, D) latents.

    Returns:
        (Q, out_size): a transposed view of the feature-major output.
    """
    rows = q.shape[0]
    q = q.T  # (F, Q)
    pad = bucket_padding(rows, q.device)
    if pad:  # zero columns ride along to the output and are cut off there; BatchNorm never counts them
        q, structure = nn.functional.pad(q, (0, pad)), nn.functional.pad(structure, (0, pad))
    counted = rows if pad else None
    # z's share as a matmul with the one-hot of each query's structure (B × Q' values): its backward is
    # a matmul too, where a gather along columns has a scatter along columns as backward, which cost more
    # than all the field's matmuls.
    one_hot = (structure[None, :] == torch.arange(len(z), device=z.device)[:, None]).to(q.dtype)
    latent = field.first_latent(z).T  # (C, B): z's share of the first layer, once per structure
    joined = torch.cat([q, one_hot]).to(latent.dtype)
    written_out = pad and isinstance(field.norms[0], nn.BatchNorm1d)  # BatchNormReLU takes the gradient
    with torch.no_grad() if written_out else contextlib.nullcontext():
        h = torch.cat([field.first_query.weight, latent], dim=1) @ joined
    first = FirstLayer(joined, field.first_query.weight, latent) if written_out else None
    h = train_batch_norm_relu(field.norms[0], h, counted, first=first)
    q = q.to(h.dtype)
    for layer, norm in zip(field.hidden, field.norms[1:]):
        if pad:
            product = QueryConcatLinear.apply(h, q, layer.weight, layer.bias)  # the bias is added in BatchNorm
            h = train_batch_norm_relu(norm, product, counted, bias=layer.bias)
        else:
            h = train_batch_norm_relu(norm, torch.addmm(layer.bias[:, None], layer.weight, torch.cat([h, q])), None)
    return torch.addmm(field.out.bias[:, None], field.out.weight, torch.cat([h, q]))[:, :rows].T


class FirstLayer(NamedTuple):
    """A field's first layer, h = [query_weight, latent] @ joined: what its gradient goes to."""

    joined: Tensor  # (F + B, Q'): the query's F features over the one-hot of its structure
    query_weight: Tensor  # (C, F)
    latent: Tensor  # (C, B), z's share


class QueryConcatLinear(torch.autograd.Function):
    """weight @ [h; q], a linear layer of h and the query whose bias is added later (by train_batch_norm_relu).

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


def train_batch_norm_relu(
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
