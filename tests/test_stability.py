"""The convex hull and the S.U.N. shares on hand-made entries, and the Materials Project path on a recording."""

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import cesium_chloride, rock_salt

from nesfgen.data import materials_project as mp
from nesfgen.data.store import CrystalSet
from nesfgen.errors import UserError
from nesfgen.stability import HullEntry, elemental_references, hull_from_entries, mp_hull, screen

RECORDING = Path(__file__).parent / "data" / "mp" / "entries_na_cl.json"
KEY = "Zq7secretKEYzq7secretKEYzq7secre"


def toy_hull():
    # A and B at 0 eV/atom, AB at -1 eV/atom: the hull's vertex; A3B above the A-AB tie line by 0.1
    entries = [
        HullEntry("a", {"Na": 1}, 0.0),
        HullEntry("b", {"Cl": 1}, 0.0),
        HullEntry("ab", {"Na": 1, "Cl": 1}, -1.0),
        HullEntry("a3b", {"Na": 3, "Cl": 1}, -0.4),
        HullEntry("c", {"Cs": 1}, 0.0),
        HullEntry("cb", {"Cs": 1, "Cl": 1}, -1.0),
    ]
    return hull_from_entries("local:toy", entries)


def test_energy_above_hull_by_hand():
    hull = toy_hull()
    assert hull.e_above_hull({"Na": 1, "Cl": 1}, -1.0)[0] == pytest.approx(0.0, abs=1e-9)
    assert hull.e_above_hull({"Na": 2, "Cl": 2}, -0.9)[0] == pytest.approx(0.1)
    assert hull.e_above_hull({"Na": 1, "Cl": 1}, -1.25)[0] == pytest.approx(-0.25)  # below: negative, not clipped
    # Na3Cl: the tie line between Na (0) and NaCl (-1) at x_Cl = 1/4 is at -0.5, so -0.4 is 0.1 above
    assert hull.e_above_hull({"Na": 3, "Cl": 1}, -0.4)[0] == pytest.approx(0.1)
    assert hull.e_above_hull({"Na": 1}, 0.05)[0] == pytest.approx(0.05)


def test_missing_element_is_reported_not_raised():
    above, note = toy_hull().e_above_hull({"Na": 1, "Cl": 1, "K": 1}, -1.0)
    assert math.isnan(above) and "no reference for K" in note


def _record(id, energy, status="relaxed", converged=True):
    return {
        "id": id,
        "status": status,
        "reason": "" if status == "relaxed" else "bad",
        "converged": converged,
        "energy_after": energy,
        "rmsd": 0.1,
    }


def test_shares_stable_unique_novel():
    hull = toy_hull()
    crystals = {
        "new-stable": rock_salt(a=5.64, id="new-stable"),
        "copy": rock_salt(a=5.66, id="copy"),  # the same structure as new-stable: not unique
        "meta": cesium_chloride(id="meta"),
        "known": rock_salt(a=5.0, id="known"),
    }
    records = [
        _record("new-stable", -1.1),
        _record("copy", -1.1),
        _record("meta", -0.95, converged=False),
        _record("known", -1.0),
        _record("broken", math.nan, status="failed"),
    ]
    # the training set holds a rock salt: the rock salts are not novel, CsCl is
    reference = CrystalSet.from_crystals([rock_salt(a=5.6, id="train-nacl")])
    shares = screen(records, crystals, hull, reference)
    assert shares["relaxed"] == 4 and shares["failed"] == 1
    assert shares["converged_pct"] == pytest.approx(75.0)
    assert shares["stable_pct"] == pytest.approx(60.0)  # 3 of 5 at or below the hull
    assert shares["metastable_pct"] == pytest.approx(80.0)
    assert [r["unique"] for r in records[:4]] == [True, False, True, False]
    assert shares["sun_pct"] == pytest.approx(0.0)  # the stable ones are rock salts, known from training
    assert shares["msun_pct"] == pytest.approx(20.0)  # CsCl: metastable, unique, novel
    assert shares["hull_source"] == "local:toy"
    assert shares["failures"] == [{"id": "broken", "reason": "bad"}]
    assert records[2]["e_above_hull"] == pytest.approx(0.05)


class RecordedEntries:
    """Stands in for mp-api's MPRester: replays get_entries_in_chemsys from the recording."""

    def __init__(self):
        self.recording = json.loads(RECORDING.read_text())
        self.calls = []

    def __call__(self, api_key, **kwargs):
        if len(api_key) != 32:
            raise RuntimeError("Please obtain a valid API key: Valid API keys are 32 characters.")
        return SimpleNamespace(get_entries_in_chemsys=self.get_entries_in_chemsys)

    def get_entries_in_chemsys(self, elements, compatible_only, additional_criteria):
        from pymatgen.core import Composition
        from pymatgen.entries.computed_entries import ComputedEntry

        self.calls.append((sorted(elements), compatible_only, additional_criteria))
        assert sorted(elements) == self.recording["elements"]
        return [
            ComputedEntry(
                Composition(e["composition"]),
                e["energy_per_atom"] * sum(e["composition"].values()),
                entry_id=e["entry_id"],
            )
            for e in self.recording["entries"]
        ]


def test_mp_hull_on_a_recording():
    rester = RecordedEntries()
    hull = mp_hull(mp.MPResterClient(KEY, rester_factory=rester))
    assert hull.source == "mp"
    assert hull.e_above_hull({"Na": 1, "Cl": 1}, -3.55)[0] == pytest.approx(0.05)
    assert hull.e_above_hull({"Na": 1, "Cl": 1}, -3.7)[0] == pytest.approx(-0.1)
    hull.e_above_hull({"Na": 2, "Cl": 2}, -3.6)  # the same chemical system: no second request
    assert rester.calls == [(["Cl", "Na"], True, {"thermo_types": ["GGA_GGA+U"]})]


def test_mp_hull_bad_key_is_a_user_error_without_the_key():
    hull = mp_hull(mp.MPResterClient("short-" + KEY[:8], rester_factory=RecordedEntries()))
    with pytest.raises(UserError) as raised:
        hull.e_above_hull({"Na": 1, "Cl": 1}, -3.6)
    assert KEY[:8] not in str(raised.value) and "API key" in str(raised.value)


def test_local_hull_is_built_cached_and_resumed(tmp_path, monkeypatch):
    """The cache beside the dataset, with the potential stubbed (energy = -1 eV/atom per element kind)."""
    import nesfgen.stability as stability
    from nesfgen.data.store import write_dataset

    dataset = write_dataset(
        tmp_path / "two",
        {"train": [rock_salt(id="nacl"), cesium_chloride(id="cscl")], "test": [rock_salt(a=5.7, id="t")]},
        name="two",
    )
    evaluated = []

    def energies(structures, potential):
        assert potential == "0.3.0"
        evaluated.extend(structures)
        return [-1.0 * len(s.composition) for s in structures]

    monkeypatch.setattr(stability, "BATCH", 1)
    monkeypatch.setattr(stability, "_single_point_energies", energies)
    monkeypatch.setattr(stability, "_potential_version", lambda potential: f"CHGNet {potential} (stub)")
    monkeypatch.setattr(
        stability,
        "elemental_references",
        lambda symbols, progress=None, potential="": [
            {"element": s, "prototype": "bcc", "energy_per_atom": 0.0} for s in symbols
        ],
    )
    with pytest.raises(UserError, match="nesfgen data hull"):
        stability.local_hull(str(dataset.path))
    # an interrupted build left one structure done: only the other is evaluated again
    partial = stability.hull_path(dataset).with_suffix(".partial.json")
    done = {"id": "nacl", "composition": {"Na": 1.0, "Cl": 1.0}, "energy_per_atom": -2.0}
    partial.write_text(json.dumps({"relax": False, "split": "train", "elements": [], "entries": [done]}))
    cache = stability.build_local_hull(str(dataset.path))
    assert len(evaluated) == 1 and cache["structures"] == 2 and not partial.exists()
    assert cache["potential"] == "CHGNet 0.3.0 (stub)" and stability.hull_path(dataset).name == "hull-chgnet.json"
    assert {e["element"] for e in cache["elements"]} == {"Na", "Cl", "Cs"}
    hull = stability.local_hull(str(dataset.path))
    assert hull.source == f"local:{dataset.path}"
    assert hull.e_above_hull({"Na": 1, "Cl": 1}, -1.9)[0] == pytest.approx(0.1)
    # each set of weights has its own hull: the other weights' is not built yet, and the message says how
    with pytest.raises(UserError, match=r"data hull .* potential=0\.2\.0"):
        stability.local_hull(str(dataset.path), "0.2.0")
    with pytest.raises(UserError, match="potential=0.4.0 is not a CHGNet version"):
        stability.local_hull(str(dataset.path), "0.4.0")
    only = stability.build_local_hull(str(dataset.path), elements=["Cs", "Cl"])
    assert only["structures"] == 1 and only["elements_only"] == ["Cl", "Cs"]


def test_a_structure_the_potential_refuses_gets_no_energy_and_the_others_keep_theirs():
    """An atom with no neighbour within CHGNet's 6 Å cutoff (a stretched prototype of a large atom) made
    the potential refuse the whole batch, and `data hull lcs6` crashed on its elemental references."""
    from pymatgen.core import Lattice, Structure

    from nesfgen.stability import _single_point_energies

    lonely = Structure(Lattice.cubic(12.0), ["Cs"], [[0, 0, 0]])
    structures = [rock_salt().to_structure(), lonely, cesium_chloride().to_structure()]
    energies = _single_point_energies(structures, "0.3.0")
    assert math.isfinite(energies[0]) and math.isnan(energies[1]) and math.isfinite(energies[2])


def test_a_single_point_energy_outside_the_physical_range_is_no_energy(monkeypatch):
    """CHGNet 0.2.0 gives compressed hcp nitrogen -140 eV/atom; as an elemental reference it sank every nitride
    100 eV/atom under its hull. Such an energy is refused as a relaxation's is."""
    import nesfgen.relax as relax
    import nesfgen.stability as stability

    class Potential:
        def predict_structure(self, structures, task, batch_size):
            return [{"e": e} for e in (-140.3, -3.7, 2999.7)]

    monkeypatch.setattr(relax, "load_potential", lambda name: Potential())
    energies = stability._single_point_energies([None] * 3, "0.2.0")
    assert math.isnan(energies[0]) and energies[1] == -3.7 and math.isnan(energies[2])


def test_elemental_references_find_each_element_s_ground_state_prototype():
    """The real search (CHGNet single points over the prototypes and cell sizes), not a stub: silicon is diamond
    at CHGNet's -5.3 eV/atom; sodium a close-packed or bcc metal near -1.3 eV/atom."""
    references = {r["element"]: r for r in elemental_references(["Si", "Na", "Si"])}
    assert sorted(references) == ["Na", "Si"]
    assert references["Si"]["prototype"] == "diamond" and -5.45 < references["Si"]["energy_per_atom"] < -5.2
    assert references["Na"]["prototype"] in {"bcc", "fcc", "hcp"}
    assert -1.45 < references["Na"]["energy_per_atom"] < -1.15
