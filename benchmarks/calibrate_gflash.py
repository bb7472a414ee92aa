"""Fit gflash's per-material corrections (caloforge/data/gflash_tuning.json) to Geant4 showers.

    PYTHONPATH=. python benchmarks/calibrate_gflash.py --samples /tmp/g4ref --write

For each geometry below, the Geant4 calibration sample ``<samples>/<geometry>/geant4-n500-s1.h5``
(made by ``benchmarks/gflash_vs_geant4.py -n 500 --seed 1 --engines geant4 --only-simulate``:
an independent seed from the comparison's seed 0) is re-simulated with gflash at the same
incident energies and directions, in this process, while the corrections of the geometry's
main material (:mod:`caloforge.simulate.tuning`) are adjusted one at a time, each to match
one summary statistic of the Geant4 sample:

==========================  ===========================================================
``ln_T_shift``              mean longitudinal centre of gravity [mm]
``ln_alpha_shift``          mean longitudinal RMS width of a shower [mm]
``r_core_scale``            energy fraction in the voxels whose centre lies within the Geant4
                            sample's median energy radius (per-shower normalised)
``r_tail_scale``            energy-weighted mean voxel radius [mm]
``spot_scale``              mean ln(number of hit voxels)
``spot_exponent_shift``     slope of ln(hit voxels) against ln(E_inc)
``sampling_term_scale``     RMS of (E_tot/E_inc − its mean in the energy bin)·√(E_inc/GeV)
``sampling_fraction_scale`` Σ visible energy in the material's layers (visible-scale files;
                            fixed-point update, not a root search)
==========================  ===========================================================

Each 1-d fit is a bracketed secant/bisection search on a fixed gflash seed (common random
numbers, so the statistic moves smoothly with the parameter); the sweep over parameters is
repeated ``--sweeps`` times because they interact weakly.  The result, with the statistics
before and after and the sample it came from, is printed and (``--write``) merged into the table.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from caloforge.geometry import load_geometry
from caloforge.io import read_showers
from caloforge.simulate.api import Part, _tasks, resolve_energy_scale, simulate_block
from caloforge.simulate.deposit import Stack
from caloforge.simulate.tuning import NEUTRAL, TUNING_FILE, GFlashTuning

# geometry → particle of its calibration sample; atlas-lar-pb is fitted on ds1-photons
# (finer radial bins) and atlas-4layer, made of the same materials, is left as a check
GEOMETRIES = {"ds2": "electron", "calogan": "photon", "clic": "electron", "ild": "photon", "ds1-photons": "photon"}
SAMPLE = "geant4-n500-s1.h5"
# (parameter, statistic, log-space search?, bounds)
# the spot count and the stochastic term come first: changing them changes how many random
# numbers a shower draws, hence the whole realisation (noise of order the statistics' errors);
# the shape parameters, fitted after them, move the statistics smoothly
FITS = [
    ("spot_scale", "log_hits", True, (0.25, 40.0)),
    ("spot_exponent_shift", "hits_slope", False, (-0.6, 0.3)),
    ("sampling_term_scale", "resolution", True, (0.2, 5.0)),
    ("ln_T_shift", "cog", False, (-0.6, 0.6)),
    ("ln_alpha_shift", "long_sd", False, (-0.6, 0.6)),
    ("r_core_scale", "core", True, (0.2, 5.0)),
    ("r_tail_scale", "r_mean", True, (0.2, 5.0)),
]
# Geometries read out in a few thick layers (CaloGAN 3, ATLAS 4 EM layers) fix the longitudinal
# centre of gravity but not the profile's width, and their 40 mm cells do not separate the radial
# core from the tail: there only the depth and one radial scale (core and tail together) are fitted
COARSE = {"calogan", "ds1-photons"}
COARSE_FITS = ("spot_scale", "spot_exponent_shift", "sampling_term_scale", "ln_T_shift", "r_scale")
REPLICAS = 2  # gflash showers per Geant4 shower: halves the fit's own statistical noise
GFLASH_SEED = 12345


def statistics(geo, energy: np.ndarray, showers: np.ndarray, r_cut: float | None = None) -> dict:
    """The summary statistics the fit matches (the same function for both engines); ``r_cut``:
    the radius of the core fraction (default: this sample's median energy radius)."""
    x = np.asarray(showers, dtype=np.float64)
    e = x.sum(1)
    ok = e > 0
    x, e, e_inc = x[ok], e[ok], energy[ok]
    z = geo.voxel_centers["z"]
    cog = x @ z / e
    long_sd = np.sqrt(np.maximum(x @ (z * z) / e - cog**2, 0.0))
    # radial distribution of the per-shower normalised energy, over all layers (voxel-centre
    # radii are discrete: a fraction inside a fixed radius and the mean move smoothly, quantiles do not)
    r = geo.voxel_centers["r"]
    w = (x / e[:, None]).sum(0)
    w /= w.sum()
    order = np.argsort(r)
    if r_cut is None:
        r_cut = float(r[order][np.searchsorted(np.cumsum(w[order]), 0.5)])
    core, r_mean = float(w[r <= r_cut].sum()), float(w @ r)
    ratio = e / e_inc
    # resolution: spread of E_tot/E_inc around its mean in 8 log-energy bins, scaled by √E
    bins = np.quantile(np.log(e_inc), np.linspace(0, 1, 9))
    b = np.clip(np.searchsorted(bins, np.log(e_inc), side="right") - 1, 0, 7)
    mean_b = np.bincount(b, weights=ratio, minlength=8) / np.maximum(np.bincount(b, minlength=8), 1)
    resolution = float(np.sqrt(np.mean(((ratio - mean_b[b]) * np.sqrt(e_inc / 1e3)) ** 2)))
    return {"cog": float(cog.mean()), "long_sd": float(long_sd.mean()), "core": core, "r_mean": r_mean, "r_cut": r_cut,
            "log_hits": float(np.log1p((x > 0).sum(1)).mean()),
            "hits_slope": float(np.polyfit(np.log(e_inc), np.log1p((x > 0).sum(1)), 1)[0]), "resolution": resolution,
            "e_ratio": float(ratio.mean()), "layer_energy": geo.layer_energy(x).sum(0)}


class Problem:
    """One geometry's Geant4 sample and a gflash re-simulation of it under given corrections."""

    def __init__(self, geometry: str, particle: str, path: Path) -> None:
        self.geo = load_geometry(geometry)
        data = read_showers(path)
        self.path = path
        self.energy = np.asarray(data.incident_energy, dtype=float)
        cond = data.conditions
        theta = np.asarray(cond["incident_theta"], float) if "incident_theta" in cond else math.pi / 2
        phi = np.asarray(cond["incident_phi"], float) if "incident_phi" in cond else 0.0
        impact = ((np.asarray(cond["impact_x"], float), np.asarray(cond["impact_y"], float))
                  if "impact_x" in cond else None)
        rep = lambda v: np.tile(v, REPLICAS) if np.ndim(v) else v  # noqa: E731
        self.part = Part(particle, rep(self.energy), REPLICAS * len(self.energy), theta=rep(theta), phi=rep(phi),
                         impact=None if impact is None else (rep(impact[0]), rep(impact[1])))
        self.calibrated = resolve_energy_scale(self.geo) == "calibrated"
        self.target = statistics(self.geo, self.energy, data.showers)
        self.main = Stack.build(self.geo, tuning={}).main.name
        self.materials = sorted({L.material.name for L in self.geo.layers if L.thickness > 0})
        self.evaluations = 0

    def simulate(self, table: dict[str, GFlashTuning]) -> dict:
        stack = Stack.build(self.geo, tuning=table)
        blocks = [simulate_block(stack, t, GFLASH_SEED) for t in _tasks([self.part], 512, self.calibrated)]
        self.evaluations += 1
        return statistics(self.geo, np.tile(self.energy, REPLICAS), np.concatenate([b.showers for b in blocks]),
                          self.target["r_cut"])


def _solve(f, lo: float, hi: float, x0: float, log: bool, tol: float, max_iter: int = 12) -> float:
    """Root of the increasing-or-decreasing f in [lo, hi] (secant steps kept inside a bracket)."""
    t = (lambda v: math.log(v)) if log else (lambda v: v)
    inv = (lambda u: math.exp(u)) if log else (lambda u: u)
    a, b = t(lo), t(hi)
    fa, fb = f(inv(a)), f(inv(b))
    if fa * fb > 0:  # no sign change: the bound with the smaller residual
        return inv(a) if abs(fa) < abs(fb) else inv(b)
    x = t(x0)
    for _ in range(max_iter):
        fx = f(inv(x))
        if abs(fx) < tol:
            break
        if fa * fx < 0:
            b, fb = x, fx
        else:
            a, fa = x, fx
        x_new = a - fa * (b - a) / (fb - fa)  # regula falsi inside the bracket, Illinois-style damping
        if not (min(a, b) < x_new < max(a, b)) or abs(x_new - x) < 1e-4:
            x_new = 0.5 * (a + b)
        x = x_new
    return inv(x)


def calibrate(problem: Problem, sweeps: int, start: GFlashTuning = NEUTRAL) -> tuple[GFlashTuning, dict]:
    tuning = {m: replace(NEUTRAL) for m in problem.materials}
    tuning[problem.main] = start
    target = problem.target
    before = problem.simulate({m: NEUTRAL for m in problem.materials})
    for _ in range(sweeps):
        if not problem.calibrated:  # visible files: the sampling fraction sets the energy scale
            got = problem.simulate(tuning)
            for m in problem.materials:
                layers = [i for i, L in enumerate(problem.geo.layers) if L.material.name == m and L.n_voxels > 0]
                k = target["layer_energy"][layers].sum() / max(got["layer_energy"][layers].sum(), 1e-12)
                tuning[m] = replace(tuning[m], sampling_fraction_scale=tuning[m].sampling_fraction_scale * k)
        coarse = problem.geo.name in COARSE
        fits = [f for f in FITS if f[0] in COARSE_FITS] + [("r_scale", "r_mean", True, (0.2, 5.0))] if coarse else FITS
        for name, stat, log, (lo, hi) in fits:
            scale = max(abs(target[stat]), 1e-9)

            def setting(v, name=name):  # r_scale: core and tail radii by the same factor
                return {"r_core_scale": v, "r_tail_scale": v} if name == "r_scale" else {name: v}

            def residual(v, stat=stat, scale=scale, setting=setting):
                table = dict(tuning)
                table[problem.main] = replace(tuning[problem.main], **setting(v))
                return (problem.simulate(table)[stat] - target[stat]) / scale

            start = tuning[problem.main].r_tail_scale if name == "r_scale" else getattr(tuning[problem.main], name)
            v = _solve(residual, lo, hi, start, log, tol=2e-3)
            tuning[problem.main] = replace(tuning[problem.main], **setting(round(v, 4)))
    after = problem.simulate(tuning)
    keys = ["cog", "long_sd", "core", "r_mean", "log_hits", "hits_slope", "resolution", "e_ratio"]
    report = {"geant4": {k: round(target[k], 4) for k in keys}, "gflash_before": {k: round(before[k], 4) for k in keys},
              "gflash_after": {k: round(after[k], 4) for k in keys}}
    return tuning, report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=Path, default=Path("g4ref"))
    ap.add_argument("--geometries", default=",".join(GEOMETRIES))
    ap.add_argument("--sweeps", type=int, default=3)
    ap.add_argument("--write", action="store_true", help="merge the result into the tuning table")
    ap.add_argument("--table", type=Path, default=TUNING_FILE)
    args = ap.parse_args()
    table = json.loads(args.table.read_text()) if args.table.exists() else {}
    table.setdefault("materials", {})
    for geo in args.geometries.split(","):
        path = args.samples / geo / SAMPLE
        t0 = time.process_time()
        problem = Problem(geo, GEOMETRIES[geo], path)
        tuning, report = calibrate(problem, args.sweeps)
        cpu = time.process_time() - t0
        print(json.dumps({"geometry": geo, "main": problem.main, **report,
                          "parameters": tuning[problem.main].to_dict()}, indent=1), flush=True)
        fitted = sorted({f[0] for f in FITS} - ({"ln_alpha_shift"} if geo in COARSE else set()))
        for m, t in tuning.items():
            if m != problem.main and t == NEUTRAL:
                continue
            params = t.to_dict() if m == problem.main else {"sampling_fraction_scale": t.sampling_fraction_scale}
            entry = table["materials"].get(m, {}) if m != problem.main else {}
            entry.setdefault("parameters", {}).update({k: round(v, 4) for k, v in params.items()})
            entry["source"] = {
                "geometry": geo, "particle": GEOMETRIES[geo], "showers": len(problem.energy),
                "sample": "caloforge simulate --engine geant4 -g {} -p {} --energy-range 1GeV:50GeV --log --theta 90 "
                          "-n 500 --seed 1".format(geo, GEOMETRIES[geo]),
                "fit": f"benchmarks/calibrate_gflash.py --sweeps {args.sweeps} (gflash seed {GFLASH_SEED})",
                "fitted": fitted if m == problem.main else ["sampling_fraction_scale"],
                "date": time.strftime("%Y-%m-%d", time.gmtime()), "cpu_s": round(cpu, 1),
                "gflash_evaluations": problem.evaluations,
            }
            if m == problem.main:
                entry["statistics"] = report
            table["materials"][m] = entry
    if args.write:
        table["about"] = ("gflash corrections per effective material, fitted to Geant4 11.4 (data-free EM list) "
                          "showers of a geometry made of that material; see caloforge/simulate/tuning.py and "
                          "benchmarks/calibrate_gflash.py")
        args.table.write_text(json.dumps(table, indent=1, ensure_ascii=False) + "\n")
        print(f"wrote {args.table}")


if __name__ == "__main__":
    main()
