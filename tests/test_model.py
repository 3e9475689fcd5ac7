import copy

import numpy as np
import pytest
import torch

from nesfgen import kernels
from nesfgen.config import ModelConfig
from nesfgen.crystal import lattice_matrix
from nesfgen.errors import UserError
from nesfgen.model import Field, NeSF, QueryEncoding, count_parameters
from nesfgen.sampling import Atoms, cell_matrices


def random_atoms(counts, num_species, generator):
    structure = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
    total = int(sum(counts))
    return Atoms(
        cart_coords=torch.rand(total, 3, generator=generator) * 5,
        species=torch.randint(0, num_species, (total,), generator=generator),
        structure=structure,
        lengths=torch.rand(len(counts), 3, generator=generator) * 3 + 3,
        angles=torch.full((len(counts), 3), torch.pi / 2),
    )


def test_paper_configuration_has_about_076_million_parameters():
    model = NeSF(ModelConfig(), num_species=80)
    assert 0.74e6 < count_parameters(model) < 0.78e6
    assert len(model.position_field.hidden) + 2 == 9  # first layer, 7 hidden, output
    assert len(model.species_field.hidden) + 2 == 3


def test_shapes():
    generator = torch.Generator().manual_seed(0)
    model = NeSF(ModelConfig(positional_encoding=True), num_species=7).eval()
    atoms = random_atoms([2, 5, 3], 7, generator)
    z = model.encode(atoms)
    assert z.shape == (3, 192)
    points = torch.rand(3, 11, 3, generator=generator)
    assert model.position(points, z).shape == (3, 11, 3)
    assert model.species(points, z).shape == (3, 11, 7)
    lengths, angles = model.lattice(z)
    assert lengths.shape == angles.shape == (3, 3)


def test_encoder_is_invariant_to_atom_order():
    generator = torch.Generator().manual_seed(1)
    model = NeSF(ModelConfig(), num_species=5).eval()
    atoms = random_atoms([4, 6], 5, generator)
    order = torch.cat([torch.randperm(4, generator=generator), 4 + torch.randperm(6, generator=generator)])
    shuffled = Atoms(
        atoms.cart_coords[order], atoms.species[order], atoms.structure[order], atoms.lengths, atoms.angles
    )
    assert torch.allclose(model.encode(atoms), model.encode(shuffled), atol=1e-5)


def test_grid_call_equals_packed_call():
    generator = torch.Generator().manual_seed(2)
    model = NeSF(ModelConfig(), num_species=5).eval()
    z = torch.randn(2, 192, generator=generator)
    points = torch.rand(2, 4, 3, generator=generator)
    packed = model.position_field(points.reshape(-1, 3), torch.tensor([0] * 4 + [1] * 4), z)
    assert torch.allclose(model.position(points, z).reshape(-1, 3), packed)


def test_lattice_heads_stay_float32_under_bf16_autocast():
    # In bf16 an angle near 90° could only move in 0.45° steps: the heads must train and decode in float32.
    torch.manual_seed(0)
    model = NeSF(ModelConfig(), num_species=4).eval()
    z = torch.randn(3, ModelConfig().latent_size)
    lengths, angles = model.lattice_head(z)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low_lengths, low_angles = model.lattice_head(z)
    assert low_lengths.dtype == low_angles.dtype == torch.float32
    assert torch.equal(low_lengths, lengths) and torch.equal(low_angles, angles)


def test_positional_encoding_tells_points_2_angstrom_apart():
    encoding = QueryEncoding(enabled=True, frequencies=10)
    points = torch.tensor([[1.0, 2.0, 3.0], [3.0, 2.0, 3.0]])  # 2 Å apart: every sin/cos feature agrees
    features = encoding(points)
    assert features.shape == (2, 3 + 60)
    assert torch.allclose(features[0, 3:], features[1, 3:], atol=1e-4)
    assert not torch.allclose(features[0], features[1])


def test_position_field_with_positional_encoding_learns_a_whole_cell():
    # The vector to one atom at (4, 4, 4) over an 8 Å box: impossible from 2-Å-periodic features alone.
    torch.manual_seed(0)
    field = Field(8, (64, 64, 64), 3, QueryEncoding(enabled=True, frequencies=4), batch_norm=False)
    optimizer = torch.optim.Adam(field.parameters(), lr=3e-3)
    z, structure = torch.zeros(1, 8), torch.zeros(512, dtype=torch.long)
    for _ in range(300):
        points = 8 * torch.rand(512, 3)
        loss = (field(points, structure, z) - (4.0 - points)).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.1  # the targets' own mean square is about 5.3


def test_padded_bf16_rows_change_neither_outputs_nor_gradients(monkeypatch):
    # The zero columns that keep oneDNN's shapes few must not reach BatchNorm, the outputs or the weights.
    generator = torch.Generator().manual_seed(3)
    z = torch.randn(2, 16, generator=generator)
    points = 6 * torch.rand(37, 3, generator=generator)
    structure = (torch.arange(37) >= 20).long()
    results = []
    for multiple in (1, 16):
        monkeypatch.setattr(kernels, "ROW_MULTIPLE", multiple)
        torch.manual_seed(0)
        field = Field(16, (32, 32, 32), 3, QueryEncoding(enabled=False, frequencies=0), batch_norm=True).train()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = field(points, structure, z)
        out.float().square().sum().backward()
        grads = [p.grad for p in field.parameters()]
        with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():  # and decoding, query-major
            decoded = field.eval()(points, structure, z)
        results.append((out, grads, field.norms[1].running_mean.clone(), decoded))
    (plain, plain_grads, plain_mean, plain_decoded), (padded, padded_grads, padded_mean, padded_decoded) = results
    assert padded.shape == padded_decoded.shape == (37, 3)
    assert torch.allclose(padded.float(), plain.float(), atol=1e-2)
    assert torch.allclose(padded_decoded.float(), plain_decoded.float(), atol=2e-2)
    assert torch.allclose(padded_mean, plain_mean, atol=1e-3)
    for a, b in zip(plain_grads, padded_grads):  # the unpadded run takes the native kernel: bf16 rounding apart
        assert (a - b).norm() <= 0.02 * a.norm() + 0.05  # + 0.05: biases before BatchNorm have zero gradient


def test_bf16_field_matmuls_never_see_float32_inputs():
    # A float32 query concatenated to bf16 activations promotes the whole (width + 3, Q) copy to float32,
    # twice the memory traffic in every layer forward and backward: it cost a fifth of a training step.
    generator = torch.Generator().manual_seed(4)
    field = Field(16, (32, 32, 32), 3, QueryEncoding(enabled=False, frequencies=0), batch_norm=True).train()
    seen = []

    class RecordMatmuls(torch.overrides.TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            if func is torch.addmm:
                seen.append(args[2].dtype)
            elif getattr(func, "__name__", "") in ("matmul", "__matmul__"):
                seen.append(args[1].dtype)
            return func(*args, **(kwargs or {}))

    with torch.autocast("cpu", dtype=torch.bfloat16), RecordMatmuls():
        field(6 * torch.rand(40, 3, generator=generator), torch.zeros(40, dtype=torch.long), torch.randn(1, 16))
    assert seen == [torch.bfloat16] * 4  # the first layer, two hidden layers, the output layer


def reference_field(field, points, structure, z):
    """The field as the paper writes it: query-major, z concatenated to every query, nn.BatchNorm1d called."""
    q = field.encoding(points)
    first = field.first_latent(z)[structure] + q @ field.first_query.weight.T
    h = torch.relu(field.norms[0](first))
    for layer, norm in zip(field.hidden, field.norms[1:]):
        h = torch.relu(norm(layer(torch.cat([h, q], dim=-1))))
    return field.out(torch.cat([h, q], dim=-1))


def test_feature_major_training_field_equals_the_query_major_reference():
    # Training runs feature-major, decoding query-major: outputs, every gradient and the running statistics agree.
    generator = torch.Generator().manual_seed(5)
    z = torch.randn(3, 16, generator=generator)
    points = 6 * torch.rand(50, 3, generator=generator)
    structure = torch.randint(0, 3, (50,), generator=generator)
    torch.manual_seed(0)
    field = Field(16, (32, 24, 24), 5, QueryEncoding(enabled=True, frequencies=2), batch_norm=True).train()
    reference = copy.deepcopy(field)
    zs = [z.clone().requires_grad_(), z.clone().requires_grad_()]
    out, expected = field(points, structure, zs[0]), reference_field(reference, points, structure, zs[1])
    assert torch.allclose(out, expected, atol=1e-5)
    out.square().sum().backward()
    expected.square().sum().backward()
    assert torch.allclose(zs[0].grad, zs[1].grad, atol=1e-4)
    for (name, a), b in zip(field.named_parameters(), reference.parameters()):
        assert torch.allclose(a.grad, b.grad, atol=1e-4), name
    for a, b in zip(field.buffers(), reference.buffers()):
        assert torch.allclose(a.float(), b.float(), atol=1e-6)
    field.eval(), reference.eval()
    assert torch.allclose(field(points, structure, z), reference_field(reference, points, structure, z), atol=1e-5)


def test_padded_training_field_equals_the_query_major_reference(monkeypatch):
    # The CPU bf16 training path (padding, the written-out first layer and hidden layers), here in float32 so that
    # it must agree closely: outputs, every gradient and the running statistics. Queries in no particular
    # order, one structure without any, and the query's own encoding features.
    monkeypatch.setattr(kernels, "bucket_padding", lambda rows, device: 13)
    generator = torch.Generator().manual_seed(11)
    z = torch.randn(4, 16, generator=generator)
    points = 6 * torch.rand(50, 3, generator=generator)
    structure = torch.randint(0, 3, (50,), generator=generator)  # structure 3 has no query
    torch.manual_seed(0)
    field = Field(16, (32, 24, 24), 5, QueryEncoding(enabled=True, frequencies=2), batch_norm=True).train()
    with torch.no_grad():
        for norm in field.norms:
            norm.weight.uniform_(-1.5, 1.5, generator=generator)  # negative scales too
            norm.bias.uniform_(-0.5, 0.5, generator=generator)
    reference = copy.deepcopy(field)
    zs = [z.clone().requires_grad_(), z.clone().requires_grad_()]
    for _ in range(2):  # the second step's statistics are shifted by a running mean that is no longer zero
        out, expected = field(points, structure, zs[0]), reference_field(reference, points, structure, zs[1])
        assert out.shape == (50, 5)
        assert torch.allclose(out, expected, atol=1e-5)
        out.square().sum().backward()
        expected.square().sum().backward()
    assert torch.allclose(zs[0].grad, zs[1].grad, atol=1e-4)
    for (name, a), b in zip(field.named_parameters(), reference.parameters()):
        assert torch.allclose(a.grad, b.grad, atol=1e-4, rtol=1e-4), name
    for a, b in zip(field.buffers(), reference.buffers()):
        assert torch.allclose(a.float(), b.float(), atol=1e-6)


def test_batch_norm_over_the_first_columns_matches_batchnorm1d():
    # The padded branch: statistics and running averages from the real columns only, padding ignored.
    generator = torch.Generator().manual_seed(6)
    h = 3 + 2 * torch.randn(8, 70, generator=generator)
    h[:, 50:] = 1e3  # padding that must not count
    mine, theirs = torch.nn.BatchNorm1d(8), torch.nn.BatchNorm1d(8)
    with torch.no_grad():
        for norm in (mine, theirs):
            norm.weight.uniform_(0.5, 1.5, generator=torch.Generator().manual_seed(7))
            norm.bias.uniform_(-0.5, 0.5, generator=torch.Generator().manual_seed(8))
    for _ in range(3):  # later calls shift by a running mean that is no longer zero
        out = kernels.train_batch_norm_relu(mine, h, rows=50)
        expected = torch.relu(theirs(h[:, :50].T)).T
        assert torch.allclose(out[:, :50], expected, atol=1e-5)
        assert torch.allclose(mine.running_mean, theirs.running_mean, atol=1e-6)
        assert torch.allclose(mine.running_var, theirs.running_var, atol=1e-5)


def test_batch_norm_relu_gradients_over_the_first_columns_match_batchnorm1d():
    # The written-out backward: through the statistics, only the real columns, nothing into the padding.
    generator = torch.Generator().manual_seed(9)
    real = 3 + 2 * torch.randn(8, 50, generator=generator)
    h = torch.cat([real, torch.full((8, 20), 1e3)], dim=1).requires_grad_()
    upstream = torch.randn(8, 50, generator=generator)
    mine, theirs = torch.nn.BatchNorm1d(8), torch.nn.BatchNorm1d(8)
    with torch.no_grad():
        for norm in (mine, theirs):
            norm.weight.uniform_(-1.5, 1.5, generator=torch.Generator().manual_seed(7))  # negative scales too
            norm.bias.uniform_(-0.5, 0.5, generator=torch.Generator().manual_seed(8))
    (kernels.train_batch_norm_relu(mine, h, rows=50)[:, :50] * upstream).sum().backward()
    reference = real.clone().requires_grad_()
    (torch.relu(theirs(reference.T)).T * upstream).sum().backward()
    assert torch.allclose(h.grad[:, :50], reference.grad, atol=1e-5)
    assert torch.equal(h.grad[:, 50:], torch.zeros(8, 20))
    assert torch.allclose(mine.weight.grad, theirs.weight.grad, atol=1e-4)
    assert torch.allclose(mine.bias.grad, theirs.bias.grad, atol=1e-4)


def test_cell_matrices_agree_with_the_crystal_frame():
    lengths = np.array([[3.0, 4.0, 5.0], [6.1, 5.2, 4.3]])
    angles = np.array([[90.0, 90.0, 90.0], [70.0, 100.0, 115.0]])
    matrices = cell_matrices(torch.tensor(lengths), torch.tensor(np.radians(angles))).numpy()
    expected = np.stack([lattice_matrix(length, angle) for length, angle in zip(lengths, angles)])
    assert np.allclose(matrices, expected, atol=1e-12)


def test_cell_frequency_features_are_the_fractional_phases_and_periodic():
    model = NeSF(ModelConfig(encoder_cell_frequencies=2), num_species=3).eval()
    lengths = torch.tensor([[4.0, 5.0, 6.0]])
    angles = torch.tensor([[1.3, 1.7, 2.0]])
    matrix = cell_matrices(lengths, angles)[0]
    frac = torch.tensor([[0.1, 0.25, 0.7], [1.1, 0.25, -0.3]])  # the same site, one cell apart
    atoms = Atoms(frac @ matrix, torch.tensor([0, 0]), torch.tensor([0, 0]), lengths, angles)
    features = model.encoder.position_features(atoms)
    assert features.shape == (2, 3 + 12)
    phases = 2 * torch.pi * torch.tensor([0.1, 0.25, 0.7])[:, None] * torch.tensor([1.0, 2.0])
    assert torch.allclose(features[0, 3:9], torch.sin(phases).flatten(), atol=1e-5)
    assert torch.allclose(features[0, 9:], torch.cos(phases).flatten(), atol=1e-5)
    assert torch.allclose(features[0, 3:], features[1, 3:], atol=1e-4)
    assert not torch.allclose(features[0, :3], features[1, :3])


def test_max_and_mean_pooling_sees_what_max_alone_does_not():
    # Two cells whose per-atom features have the same maxima but different means.
    config = ModelConfig(encoder_pooling="max+mean", encoder_mix_width=8)
    model = NeSF(config, num_species=2).eval()
    generator = torch.Generator().manual_seed(3)
    atoms = random_atoms([3, 5], 2, generator)
    features = model.encoder.features(atoms)
    assert features.shape == (2, 2 * 8 + 6)
    per_atom = model.encoder.per_atom(model.encoder.position_features(atoms), atoms.species)
    assert torch.allclose(features[0, 8:16], per_atom[:3].mean(0), atol=1e-6)
    assert torch.allclose(features[1, :8], per_atom[3:].amax(0), atol=1e-6)


def test_unknown_pooling_is_refused_by_name():
    with pytest.raises(UserError, match="encoder_pooling"):
        ModelConfig(encoder_pooling="sum")


def test_the_species_axes_name_every_weight_the_species_table_sizes():
    """A fine-tuning grows exactly these weights for new elements (nesfgen.train.with_new_species)."""
    small, large = NeSF(ModelConfig(), 5).state_dict(), NeSF(ModelConfig(), 7).state_dict()
    differing = {name for name in small if small[name].shape != large[name].shape}
    assert differing == set(NeSF.SPECIES_AXES)
    for name, axis in NeSF.SPECIES_AXES.items():
        assert (small[name].shape[axis], large[name].shape[axis]) == (5, 7)
