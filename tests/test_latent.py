"""Latent-space tools: endpoint resolution, interpolation, embedding and maps, at tiny size."""

import json

import numpy as np
import pytest
import torch
from conftest import TINY, rock_salt, tiny_recipe, zinc_blende

from nesfgen.config import EstimatorConfig
from nesfgen.crystal import Crystal
from nesfgen.data.store import CrystalSet, data_dir, write_dataset
from nesfgen.decoder import Decoder
from nesfgen.errors import UserError
from nesfgen.estimator import ExactField
from nesfgen.latent import (
    InterpolateOptions,
    Interpolation,
    composition_shares,
    decode_line,
    embed,
    interpolate,
    load_embedding,
    project,
    resolve_endpoint,
    save_embedding,
    step_rows,
    write_interpolation,
    write_map,
)
from nesfgen.sampling import atoms_bounding_box
from nesfgen.train import train


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A tiny model trained for one epoch on the conftest crystals at four scales (16 in the train split)."""
    root = tmp_path_factory.mktemp("latent")
    crystals = [
        Crystal.create(
            c.lengths * (1 + 0.01 * k), c.angles, None, c.atomic_numbers, f"{name}-{k}", frac_coords=c.frac_coords
        )
        for k in range(4)
        for name, c in ((name, make()) for name, make in TINY.items())
    ]
    dataset = write_dataset(
        root / "tiny", {"train": crystals[:16], "val": crystals[16:18], "test": crystals[18:]}, "tiny"
    )
    train(tiny_recipe(dataset, **{"train.epochs": 1, "estimator.steps": 3}), root / "run")
    return root / "run", dataset


def b2(a, cation, anion, id, **properties):
    """A CsCl-type (B2) cell of two atoms."""
    frac = [[0, 0, 0], [0.5, 0.5, 0.5]]
    return Crystal.create(
        [a] * 3, [90] * 3, atomic_numbers=[cation, anion], frac_coords=frac, id=id, properties=properties
    )


def local_dataset(crystals, name="mine"):
    """A dataset in the (per-test) data directory, where endpoint resolution looks."""
    return write_dataset(data_dir() / name, {"train": crystals}, name)


def test_formula_prefers_the_textbook_structure_among_local_polymorphs():
    local_dataset(
        [
            rock_salt(5.1, cation=30, anion=16, id="zns-rocksalt"),
            b2(3.2, 30, 16, "zns-cscl"),
            zinc_blende(5.45, id="zns-zincblende"),
        ]
    )
    endpoint = resolve_endpoint("ZnS")
    assert endpoint.crystal.id == "zns-zincblende" and endpoint.kind == "formula"
    assert "textbook structure" in endpoint.reason and "dataset mine (train)" == endpoint.source
    assert len(endpoint.alternatives) == 3  # two other local polymorphs and the textbook cell
    assert any("known-ZnS-zincblende" in a for a in endpoint.alternatives)
    assert resolve_endpoint("Zn2S2").crystal.id == "zns-zincblende"  # any way of writing the composition


def test_textbook_table_without_local_data_and_names_of_polymorphs():
    cubic = resolve_endpoint("BaTiO3")
    assert cubic.crystal.id == "known-BaTiO3-cubic" and "first of the textbook table" in cubic.reason
    assert any("known-BaTiO3-tetragonal" in a for a in cubic.alternatives)
    for query in ("BaTiO3-tetragonal", "known-BaTiO3-tetragonal"):
        assert resolve_endpoint(query).crystal.id == "known-BaTiO3-tetragonal"
    textbook_rock_salt = resolve_endpoint("PbS")
    local_dataset([b2(3.65, 82, 16, "pbs-b2")])
    without_textbook_structure = resolve_endpoint("PbS")  # the local entry is CsCl-type, the textbook galena rock salt
    assert without_textbook_structure.crystal.id == textbook_rock_salt.crystal.id == "known-PbS-rocksalt"
    assert "no local entry has its space group" in without_textbook_structure.reason


def test_energy_above_hull_then_fewest_atoms_for_other_compounds():
    kbr_b2 = b2(4.1, 19, 35, "kbr-b2", e_above_hull=0.05)
    salt = rock_salt(6.6, cation=19, anion=35)
    kbr_b1 = Crystal.create(
        salt.lengths, salt.angles, salt.cart_coords, salt.atomic_numbers, "kbr-b1", properties={"e_above_hull": 0.0}
    )
    local_dataset([kbr_b2, kbr_b1])
    chosen = resolve_endpoint("KBr")
    assert chosen.crystal.id == "kbr-b1" and "lowest energy above hull" in chosen.reason
    local_dataset([kbr_b2.with_id("plain-b2"), rock_salt(6.6, 19, 35, id="plain-b1")], name="other")
    assert resolve_endpoint("KBr").crystal.id == "kbr-b1"  # the dataset with energies still decides


def test_fewest_atoms_without_energies():
    local_dataset([rock_salt(6.6, 19, 35, id="kbr-b1"), b2(4.1, 19, 35, "kbr-b2")])
    chosen = resolve_endpoint("KBr")
    assert chosen.crystal.id == "kbr-b2" and chosen.reason == "fewest atoms per cell"


def test_id_and_file_endpoints(tmp_path):
    local_dataset([rock_salt(id="salt-1"), zinc_blende(id="blende-1")])
    by_id = resolve_endpoint("blende-1")
    assert by_id.kind == "id" and by_id.crystal.reduced_formula == "ZnS" and by_id.source == "dataset mine (train)"
    cif = tmp_path / "salt.cif"
    cif.write_text(rock_salt(5.5).to_cif())
    by_file = resolve_endpoint(str(cif))
    assert by_file.kind == "file" and by_file.crystal.id == "salt" and by_file.crystal.num_atoms == 8
    np.testing.assert_allclose(by_file.crystal.lengths, [5.5] * 3, atol=1e-6)
    poscar = tmp_path / "POSCAR"
    zinc_blende().to_structure().to(filename=str(poscar), fmt="poscar")
    assert resolve_endpoint(str(poscar)).crystal.reduced_formula == "ZnS"


def test_a_damaged_dataset_in_the_store_is_skipped_with_one_warning(caplog):
    local_dataset([rock_salt(id="salt-1")], name="good")
    broken = local_dataset([zinc_blende(id="blende-1")], name="broken")
    (broken.path / "train.npz").write_bytes(b"not a zip file any more")
    with caplog.at_level("WARNING", logger="nesfgen.latent.endpoints"):
        endpoint = resolve_endpoint("ZnS")  # found in the textbook table, not in the damaged dataset
        assert resolve_endpoint("salt-1").source == "dataset good (train)"
    assert endpoint.crystal.reduced_formula == "ZnS" and "broken" not in endpoint.source
    warnings = [r.getMessage() for r in caplog.records]
    assert len([w for w in warnings if "not searching" in w and "broken" in w]) == 1  # once, not per lookup
    assert all("good" not in w for w in warnings)


@pytest.fixture(scope="module")
def builtin_folder(tmp_path_factory):
    """The generated built-in dataset, made once for the module (each test has its own data directory)."""
    from nesfgen.data.builtin import builtin_dataset

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("NESFGEN_DATA_DIR", str(tmp_path_factory.mktemp("builtin")))
        return builtin_dataset().path


def test_resolution_errors_say_where_they_looked(builtin_folder, monkeypatch):
    (data_dir()).mkdir(parents=True)
    (data_dir() / builtin_folder.name).symlink_to(builtin_folder)
    monkeypatch.setattr("nesfgen.data.materials_project.api_key", no_key)
    for query, message in [
        ("nowhere/salt.cif", "structure file nowhere/salt.cif does not exist"),
        ("XeF7", "formula XeF7 found; looked in: local datasets .* Materials Project .skipped: no API key.* generated"),
        ("mp-999999", "neither a structure file, nor a material id"),
        ("  ", "is empty"),
    ]:
        with pytest.raises(UserError, match=message):
            resolve_endpoint(query)
    assert resolve_endpoint("builtin-rocksalt-KBr").source == f"dataset {builtin_folder.name} (train)"


def no_key():
    raise UserError("no Materials Project API key")


class RecordedMaterialsProject:
    """Stands in for mp-api: two KBr polymorphs as summary documents."""

    requests = []

    def __init__(self, api_key):
        assert api_key == "test-key"

    def search(self, criteria, fields, page, page_size):
        self.requests.append(criteria)
        salt, b2_cell = rock_salt(6.6, 19, 35), b2(4.1, 19, 35, "x")
        return [
            {"material_id": "mp-b2", "structure": b2_cell.to_structure().as_dict(), "energy_above_hull": 0.04},
            {"material_id": "mp-b1", "structure": salt.to_structure().as_dict(), "energy_above_hull": 0.0},
        ]


def test_materials_project_after_the_offline_sources(monkeypatch):
    monkeypatch.setenv("MP_API_KEY", "test-key")
    monkeypatch.setattr("nesfgen.data.materials_project.MPResterClient", RecordedMaterialsProject)
    chosen = resolve_endpoint("KBr")  # in neither a local dataset nor the textbook table
    assert chosen.crystal.id == "mp-b1" and chosen.source == "Materials Project"
    assert "lowest energy above hull" in chosen.reason and "mp-b2" in chosen.alternatives[0]
    assert RecordedMaterialsProject.requests == [{"formula": "KBr"}]
    assert resolve_endpoint("NaCl").source == "built-in table of textbook compounds"  # offline first: no request
    assert len(RecordedMaterialsProject.requests) == 1


def test_composition_shares():
    zn, cd, s = 30, 48, 16
    a, b = np.array([zn, s]), np.array([cd, s])
    assert composition_shares(np.array([zn, zn, s, s]), a, b) == (1.0, 0.0, 0.0)
    assert composition_shares(np.array([zn, cd, s, s]), a, b) == (0.5, 0.5, 0.0)
    assert composition_shares(np.array([zn, zn, s, 8]), a, b) == (0.75, 0.0, 0.25)
    assert composition_shares(np.array([s, s]), a, b) == (None, None, 0.0)  # only shared atoms: undefined


def test_line_through_the_exact_field_ends_on_both_endpoints():
    a, b = zinc_blende(), rock_salt()
    table = sorted({*a.atomic_numbers.tolist(), *b.atomic_numbers.tolist()})
    field = ExactField([a, b], table)
    box = atoms_bounding_box(CrystalSet.from_crystals([a, b]))
    decoder = Decoder(field, box, table, EstimatorConfig())
    t, decoding = decode_line(decoder, torch.tensor([0.0]), torch.tensor([1.0]), 5)
    np.testing.assert_allclose(t, [0, 0.25, 0.5, 0.75, 1])
    rows = step_rows(t, decoding.crystals, a, b)
    assert [r["reduced_formula"] for r in rows] == ["ZnS", "ZnS", "ZnS", "NaCl", "NaCl"]
    assert rows[0]["num_atoms"] == rows[-1]["num_atoms"] == 8
    assert (rows[0]["space_group"], rows[-1]["space_group"]) == (216, 225)
    assert (rows[0]["share_a"], rows[-1]["share_b"]) == (1.0, 1.0)
    assert rows[-1]["a"] == pytest.approx(5.64, abs=1e-3)
    line = Interpolation((None, None), "exact", t, decoding.crystals, rows)
    assert line.intermediate_only_end_elements_pct() == 100.0
    rows[2] |= {"share_other": 0.25}  # a step with an atom of neither end
    assert line.intermediate_only_end_elements_pct() == pytest.approx(100 * 2 / 3)
    assert (
        Interpolation(
            (None, None), "exact", t[:2], decoding.crystals[:2], rows[:2]
        ).intermediate_only_end_elements_pct()
        is None
    )


def test_interpolate_with_a_tiny_model_writes_its_outputs(tiny_run, tmp_path):
    run, _ = tiny_run
    overrides = {"estimator.steps": "2"}
    result = interpolate(
        InterpolateOptions(a="NaCl", b="ZnS", checkpoint=str(run), steps=3, estimator=overrides, symmetrize=True)
    )
    assert [e.crystal.id for e in result.endpoints] == ["known-NaCl-rocksalt", "known-ZnS-zincblende"]
    assert [row["t"] for row in result.rows] == [0.0, 0.5, 1.0]
    files = write_interpolation(result, tmp_path / "out")
    names = {f.name for f in files}
    assert {"a.input.cif", "b.input.cif", "interpolation.json", "interpolation.png"} <= names
    decoded = sum(c is not None for c in result.decoded)
    assert len(list((tmp_path / "out").glob("step-*.cif"))) == decoded
    summary = json.loads((tmp_path / "out" / "interpolation.json").read_text())
    assert summary["a"]["id"] == "known-NaCl-rocksalt" and len(summary["rows"]) == 3 and summary["symmetrized"]
    with pytest.raises(UserError, match="steps must be at least 2"):
        interpolate(InterpolateOptions(a="NaCl", b="ZnS", checkpoint=str(run), steps=1))


def test_species_outside_the_model_are_refused(tiny_run, tmp_path):
    run, _ = tiny_run
    cif = tmp_path / "kbr.cif"
    cif.write_text(rock_salt(6.6, cation=19, anion=35).to_cif())
    with pytest.raises(UserError, match=r"holds K, Br, which the model .* cannot encode"):
        interpolate(InterpolateOptions(a=str(cif), b="NaCl", checkpoint=str(run)))


def test_missing_default_model_is_a_clear_error(monkeypatch):
    monkeypatch.setattr("nesfgen.decoder.DEFAULT_MODEL", "no-such-model")
    with pytest.raises(UserError, match="checkpoint no-such-model not found"):
        interpolate(InterpolateOptions(a="NaCl", b="ZnS"))


def test_embed_refuses_an_unusable_out_before_encoding(tmp_path, unwritable_folder, monkeypatch):
    from nesfgen.latent import embedding

    def encode_everything(*args, **kwargs):
        raise AssertionError("encoded before checking out=")

    monkeypatch.setattr(embedding, "embed", encode_everything)
    for out, reason in [
        (unwritable_folder / "z.npz", "cannot write the latents folder"),
        (tmp_path / "z.txt", "must end in .npz or .csv"),
    ]:
        with pytest.raises(UserError, match=reason):
            embedding.embed_to_file(embedding.EmbedOptions(out=str(out)))


def test_embed_save_load_and_map(tiny_run, tmp_path):
    run, dataset = tiny_run
    embedding = embed(str(run), str(dataset.path), "all")
    total = 4 * len(TINY)
    assert len(embedding) == total and embedding.latents.shape == (total, 16)
    assert set(embedding.splits) == {"train", "val", "test"}
    assert embedding.space_group[embedding.ids.index("NaCl-0")] == 225
    for suffix in ("npz", "csv"):
        loaded = load_embedding(save_embedding(embedding, tmp_path / f"latents.{suffix}"))
        assert loaded.ids == embedding.ids and loaded.formulas == embedding.formulas
        np.testing.assert_allclose(loaded.latents, embedding.latents, rtol=1e-6)
        np.testing.assert_array_equal(loaded.space_group, embedding.space_group)
    coords, info = project(embedding.latents[:8], "tsne", seed=1)
    again, _ = project(embedding.latents[:8], "tsne", seed=1)
    assert coords.shape == (8, 2) and info["perplexity"] == pytest.approx(7 / 3)
    np.testing.assert_allclose(coords, again)  # seeded
    files = write_map(embedding, project(embedding.latents, "pca")[0], "pca", tmp_path / "map")
    assert {f.name for f in files} == {"map.csv", "map.json", "map-volume.png", "map-atoms.png", "map-space-group.png"}
    assert len((tmp_path / "map" / "map.csv").read_text().splitlines()) == total + 1


def test_a_latents_file_with_nan_or_python_objects_is_refused_by_name(tmp_path):
    from nesfgen.latent.embedding import Embedding

    latents = np.zeros((2, 4), dtype=np.float32)
    latents[1, 2] = np.nan  # a model whose training diverged
    embedding = Embedding(
        ids=["a", "b"],
        splits=["test", "test"],
        formulas=["NaCl", "KCl"],
        latents=latents,
        volume=np.ones(2),
        num_atoms=np.full(2, 2),
        space_group=np.full(2, 225),
    )
    for suffix in ("npz", "csv"):
        with pytest.raises(UserError, match=r"1 of 2 latents hold NaN or infinity"):
            load_embedding(save_embedding(embedding, tmp_path / f"nan.{suffix}"))
    objects = tmp_path / "objects.npz"
    np.savez(objects, id=np.array([{"a": 1}], dtype=object))
    with pytest.raises(UserError, match="holds Python objects, which are not loaded") as refused:
        load_embedding(objects)
    assert "allow_pickle" not in str(refused.value)


def test_pca_keeps_a_line_a_line():
    direction = np.linspace(-1, 1, 16)
    latents = np.outer(np.arange(6.0), direction) + 3.0  # six points on a line in 16-D
    coords, info = project(latents, "pca")
    assert info["explained_variance_ratio"][0] == pytest.approx(1.0)
    np.testing.assert_allclose(np.diff(coords[:, 0]), np.linalg.norm(direction), rtol=1e-6)
    np.testing.assert_allclose(coords[:, 1], 0, atol=1e-9)
    with pytest.raises(UserError, match="method must be one of"):
        project(latents, "umap")
    with pytest.raises(UserError, match="at least 4 structures"):
        project(latents[:3], "tsne")


@pytest.mark.parametrize(
    "args, message",
    [
        (["interpolate", "ZnS"], "Missing argument"),
        (["interpolate", "ZnS", "CdS", "stepz=3"], "unknown option stepz"),
        (["map", "nowhere.npz"], "does not exist"),
    ],
)
def test_cli_mistakes_exit_2(cli, tmp_path, monkeypatch, args, message):
    monkeypatch.delenv("COLUMNS", raising=False)  # as in a script whose output goes to a file
    result = cli(*args, cwd=tmp_path)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert message in " ".join(result.stderr.split())
    assert "Traceback" not in result.stderr


def test_cli_interpolate_embed_and_map(cli, tiny_run, tmp_path, monkeypatch):
    monkeypatch.delenv("COLUMNS", raising=False)  # as in a script whose output goes to a file
    run, dataset = tiny_run
    steps = ("steps=3", "estimator.steps=2")
    table = cli("interpolate", "NaCl", "ZnS", f"checkpoint={run}", *steps, f"out={tmp_path / 'i'}")
    assert table.returncode == 0, table.stderr
    assert "NaCl → ZnS" in table.stdout and "known-ZnS-zincblende" in table.stdout
    assert "space group" in table.stdout and "% other" in table.stdout  # piped tables keep whole columns
    assert (tmp_path / "i" / "interpolation.png").is_file()
    latents = tmp_path / "z.csv"
    assert cli("embed", f"checkpoint={run}", f"data={dataset.path}", "split=train", f"out={latents}").returncode == 0
    mapped = cli("map", str(latents), "method=pca", f"out={tmp_path / 'm'}", "--json")
    assert mapped.returncode == 0, mapped.stderr
    assert json.loads(mapped.stdout)["structures"] == 16 and (tmp_path / "m" / "map-space-group.png").is_file()


def test_an_unreadable_dataset_is_reported_once_however_often_it_is_searched(tmp_path, monkeypatch, caplog):
    from nesfgen.latent import local_datasets

    data = tmp_path / "store"
    (data / "broken").mkdir(parents=True)
    (data / "broken" / "manifest.json").write_text("{not json")
    monkeypatch.setenv("NESFGEN_DATA_DIR", str(data))
    with caplog.at_level("WARNING", logger="nesfgen.latent.endpoints"):
        assert local_datasets() == [] and local_datasets() == []  # both endpoints of an interpolation search
    assert [r.getMessage().count("not searching") for r in caplog.records] == [1]
