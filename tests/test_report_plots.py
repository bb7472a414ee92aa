"""What a physicist looks for in the report's histograms: labelled axes with units,
ratio panels whose range fits the data, and text that does not cover the bars."""

from __future__ import annotations

import numpy as np
import pytest

from caloforge.evaluate.plots import _hist_panel, feature_axis, ratio_limits
from caloforge.evaluate.render import pyplot
from caloforge.evaluate.result import FeatureHistogram


def _hist(name: str, factor: float) -> FeatureHistogram:
    edges = np.linspace(0.0, 100.0, 21)
    ref = np.r_[0, np.exp(-0.5 * ((np.arange(20) - 10) / 3.0) ** 2) * 1000, 0]
    gen = ref.copy()
    gen[5:9] *= factor  # a generated excess well outside 0.5–1.5
    return FeatureHistogram(name, edges, ref, gen, {"chi2_ndf": 12.0, "separation_power": 0.1})


@pytest.mark.parametrize("name, xlabel, ylabel", [
    ("E_layer_3", "E in layer 3 [MeV]", "1/N dN/dx [1/MeV]"),
    ("CE_r_layer_1", "centre of energy r in layer 1 [mm]", "1/N dN/dx [1/mm]"),
    ("E_ratio", "E_tot / E_inc", "1/N dN/dx"),
])
def test_histogram_axes_are_labelled_with_units(name, xlabel, ylabel):
    plt = pyplot()
    fig = plt.figure()
    ax, rax = fig.add_subplot(211), fig.add_subplot(212)
    _hist_panel(ax, rax, _hist(name, 2.5), ("reference", "generated"), name)
    assert rax.get_xlabel() == xlabel and ax.get_ylabel() == ylabel
    assert rax.get_ylabel() == "gen/ref"
    # the ratio range comes from the data: the 2.5× excess is (nearly) on scale
    lo, hi = rax.get_ylim()
    assert hi > 2.0 and lo < 1.0  # the old fixed 0.5–1.5 cut it off
    # the bars stay below the band that holds the χ²/separation text
    tallest = max(p.get_window_extent().y1 for p in ax.patches)
    text_bottom = min(t.get_window_extent().y0 for t in ax.texts)
    fig.canvas.draw()
    assert tallest < text_bottom
    plt.close(fig)


def test_ratio_limits_follow_the_data():
    assert ratio_limits(np.array([0.99, 1.0, 1.02])) == (0.9, 1.1)  # at least ±0.1
    lo, hi = ratio_limits(np.r_[np.linspace(0.4, 1.6, 31), np.nan])  # points spread widely: all on scale
    assert lo <= 0.45 and hi >= 1.55
    lo, hi = ratio_limits(np.r_[np.linspace(0.95, 1.05, 30), 6.0])  # one empty-bin outlier does not flatten them
    assert hi < 1.5
    assert ratio_limits(np.full(50, 40.0))[1] == 4.0  # bounded
    assert ratio_limits(np.array([np.nan])) == (0.9, 1.1)


def test_every_feature_name_has_a_label():
    from caloforge.evaluate.features import high_level_features
    from caloforge.geometry import load_geometry

    for geo in ("ds1-photons", "atlas-4layer"):
        g = load_geometry(geo)
        names = high_level_features(np.ones((2, g.n_voxels)), np.full(2, 1e3), g)
        for n in names:
            label, unit = feature_axis(n)
            assert label != n or n in ("E_tot",), f"{n} has no axis label"
