"""The per-material gflash corrections (caloforge/data/gflash_tuning.json): table and wiring."""

from __future__ import annotations

import json

import numpy as np
import pytest

from caloforge.geometry import MATERIALS, load_geometry
from caloforge.simulate.api import Part, _tasks, simulate_block
from caloforge.simulate.deposit import Stack
from caloforge.simulate.em import mean_parameters
from caloforge.simulate.tuning import NEUTRAL, TUNING_FILE, GFlashTuning, load_tuning

BOUNDS = {"ln_T_shift": (-0.6, 0.6), "ln_alpha_shift": (-0.6, 0.6), "r_core_scale": (0.2, 5.0),
          "r_tail_scale": (0.2, 5.0), "spot_scale": (0.25, 40.0), "spot_exponent_shift": (-0.6, 0.3), "sampling_fraction_scale": (0.3, 3.0),
          "sampling_term_scale": (0.2, 5.0)}


def test_table_entries_are_known_materials_with_their_source():
    table = json.loads(TUNING_FILE.read_text())
    assert table["materials"], "the table is empty"
    for name, entry in table["materials"].items():
        assert name in MATERIALS
        assert "geant4" in entry["source"]["sample"] and entry["source"]["showers"] >= 100
        for field, value in entry["parameters"].items():
            lo, hi = BOUNDS[field]
            assert lo <= value <= hi, (name, field, value)  # the fit's search bounds


def test_neutral_tuning_is_the_published_parametrisation():
    e = np.array([1e3, 1e4, 1e5])
    p = mean_parameters(e, 72.0, 8.6, sampling=True, tuning=NEUTRAL)
    ly = np.log(e / 8.6)
    np.testing.assert_allclose(p.mean_ln_T, np.log(ly - 0.812))
    np.testing.assert_allclose(p.mean_ln_alpha, np.log(0.81 + (0.458 + 2.26 / 72.0) * ly))
    shifted = mean_parameters(e, 72.0, 8.6, sampling=True, tuning=GFlashTuning(ln_T_shift=0.1, ln_alpha_shift=-0.2))
    np.testing.assert_allclose(shifted.mean_ln_T - p.mean_ln_T, 0.1)
    np.testing.assert_allclose(shifted.mean_ln_alpha - p.mean_ln_alpha, -0.2)


def test_stack_applies_the_table_per_layer_material():
    geo = load_geometry("ild")
    bare = Stack.build(geo, tuning={})
    assert bare.tuning == NEUTRAL
    np.testing.assert_allclose(bare.voxel_fraction, np.array([L.sampling_fraction for L in geo.layers])[geo.voxel_layer])
    table = {"ild-w-si-back": GFlashTuning(sampling_fraction_scale=1.5, sampling_term_scale=2.0)}
    tuned = Stack.build(geo, tuning=table)
    back = np.array([L.material.name == "ild-w-si-back" for L in geo.layers])[geo.voxel_layer]
    np.testing.assert_allclose(tuned.voxel_fraction[back], 1.5 * bare.voxel_fraction[back])
    np.testing.assert_allclose(tuned.voxel_fraction[~back], bare.voxel_fraction[~back])
    np.testing.assert_allclose(tuned.voxel_term[back], 2.0 * bare.voxel_term[back])
    assert tuned.tuning == NEUTRAL  # the EM shape follows the main (front) material only
    assert Stack.build(geo).tuning == load_tuning().get(bare.main.name, NEUTRAL)


@pytest.mark.parametrize("field, value, more", [("spot_scale", 4.0, "hits"), ("ln_T_shift", 0.3, "cog"),
                                                ("r_tail_scale", 2.0, "r2")])
def test_each_correction_moves_its_observable(field, value, more):
    """More spots → more hit voxels; a later maximum → deeper; wider tail → wider shower."""
    geo = load_geometry("ds2")
    part = Part("electron", np.full(64, 2e4), 64)
    z, r = geo.voxel_centers["z"], geo.voxel_centers["r"]

    def observe(tuning):
        stack = Stack.build(geo, tuning={"w-si-calochallenge": tuning})
        x = np.concatenate([simulate_block(stack, t, 7).showers for t in _tasks([part], 64, True)]).astype(float)
        e = x.sum(1)
        return {"hits": (x > 0).sum(1).mean(), "cog": (x @ z / e).mean(), "r2": (x @ (r * r) / e).mean()}

    base, moved = observe(NEUTRAL), observe(GFlashTuning(**{field: value}))
    assert moved[more] > base[more] * 1.02
