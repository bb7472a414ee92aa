"""3DGAN and BIB-AE on the highly granular Si-W grids: generation timing and fixed-budget fidelity.

    # timing: ms per shower at batch 1, 100 and the best batch, one CPU thread (paper-size and CPU configs)
    nice -n 10 .venv/bin/python benchmarks/bench_granular.py timing
    # fidelity after a fixed training budget (reduced: ~4 min per model on a CPU)
    nice -n 10 .venv/bin/python benchmarks/bench_granular.py fidelity --minutes 4
    # side by side with CaloShowerGAN adapted to the same grid, file and CPU budget (the tables in docs)
    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/bench_granular.py fidelity --minutes 10 \
        --budget-clock cpu --baseline caloshowergan
    # the papers' budget (GPU): shipped paper-size configs, full presets
    .venv/bin/python benchmarks/bench_granular.py fidelity --gan-config gan3d-clic-angled --gan-preset clic-angled \\
        --gan-scale 1 --bibae-config bibae-ild-angled --bibae-scale 1 --minutes 600 --device cuda

Timing uses freshly initialised weights (the cost does not depend on their values) and the
reference simulator (our GFlash-type stand-in for Geant4) for the same geometries.  Fidelity
simulates a training set and an independent reference set (for BIB-AE the 9 (E, θ) test
points), trains with :func:`caloforge.train.train`, generates showers for the reference's
conditions and runs :func:`caloforge.evaluate.compare` (E_tot χ², FPD/KPD, classifier AUC and
the granular observables); for 3DGAN it also regresses the primary energy and angle of
reference and generated showers with the trained discriminator.  ``--baseline caloshowergan``
trains the published CaloShowerGAN photon networks (MLP generator and critic, WGAN-GP),
adapted to the same grid and conditions (log E, cos θ), on the same training showers, for
the same budget, and scores it on the same reference showers.  ``--budget-clock cpu``
charges only the CPU seconds each training process got (fair on a shared machine).  Results go to
``--output``/*.json; a markdown summary is printed.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from caloforge.geometry import load_geometry
from caloforge.train import load_config

BATCHES = (1, 10, 100, 256)


def _fitted(config_name: str):
    """A model of ``config_name`` with a plausible fitted state (random weights)."""
    from caloforge.models.base import fit

    cfg = load_config(config_name).model
    geo = load_geometry(cfg.geometry)
    e = torch.tensor([1e4, 1e5, 5e5], dtype=torch.float64)
    th = torch.tensor([1.1, 1.5, 2.0], dtype=torch.float64)
    showers = torch.rand(3, geo.n_voxels) * 1e-2
    cond = {"incident_theta": th, "incident_phi": torch.zeros(3, dtype=torch.float64)}
    model = fit(cfg, showers, e, cond).eval()
    if cfg.name == "bibae":  # time what generation runs after training: KDE latent + post-processor
        model.fit_latent_density(showers, e, cond)
        model.postprocessor_active.fill_(1)
    return model


def _time_sample(model, batch: int, budget_s: float) -> float:
    """ms per shower of model.sample at ``batch`` (repeats until ``budget_s`` or 5 batches)."""
    gen = torch.Generator().manual_seed(0)
    lo, hi = model.energy_limits
    cond = {"incident_energy": np.full(batch, math.sqrt(lo * hi)), "incident_theta": np.full(batch, 1.4)}
    model.sample({k: v[:2] for k, v in cond.items()}, gen)  # warm-up (allocator, oneDNN primitives)
    n, t0 = 0, time.perf_counter()
    while n < 5 * batch and (time.perf_counter() - t0 < budget_s or n == 0):
        model.sample(cond, gen)
        n += batch
    return 1e3 * (time.perf_counter() - t0) / n


def timing(args) -> dict:
    from caloforge.simulate import simulate

    torch.set_num_threads(1)
    out = {"threads": 1, "models": {}, "simulator": {}}
    for name in args.configs:
        model = _fitted(name)
        row = {}
        for b in BATCHES:
            if b > args.max_batch:
                continue
            row[b] = _time_sample(model, b, args.budget)
            print(f"{name:24s} batch {b:4d}: {row[b]:9.2f} ms/shower", flush=True)
        best = min(row, key=row.get)
        out["models"][name] = {"ms_per_shower": row, "best_batch": best, "best_ms": row[best],
                               "parameters": sum(p.numel() for p in model.parameters())}
    for geo, particle, energy, theta in (("clic-angled", "electron", 100e3, 1.4), ("ild-angled", "photon", 50e3, 1.0)):
        simulate(geo, particle, [energy], 2, theta=theta, seed=0)  # warm-up
        t0 = time.perf_counter()
        simulate(geo, particle, [energy], args.sim_showers, theta=theta, seed=1, workers=1)
        ms = 1e3 * (time.perf_counter() - t0) / args.sim_showers
        out["simulator"][f"{geo} {particle} {energy / 1e3:g} GeV"] = ms
        print(f"reference simulator {geo}: {ms:.1f} ms/shower", flush=True)
    return out


def _regress(model, data, n: int = 2000):
    e, th = model.regress(torch.as_tensor(np.asarray(data.showers[:n])))
    true_e = np.asarray(data.incident_energy[:n])
    true_th = np.asarray(data.conditions.get("incident_theta", np.full(len(true_e), math.pi / 2))[:n])
    rel = (e.numpy() - true_e) / true_e
    dth = np.degrees(th.numpy() - true_th)
    return {"energy_bias": float(np.mean(rel)), "energy_resolution": float(np.std(rel)),
            "theta_bias_deg": float(np.mean(dth)), "theta_resolution_deg": float(np.std(dth))}


def caloshowergan_config(geometry: str, particle: str, batch_size: int) -> dict:
    """The published CaloShowerGAN photon networks on another grid, conditioned on log E and cos θ."""
    return {"description": f"CaloShowerGAN (DS1-photon networks) adapted to {geometry}",
            "model": {"name": "caloshowergan", "geometry": geometry, "particle": particle,
                      "conditions": {"incident_energy": "log", "incident_theta": "cos"}},
            "training": {"batch_size": batch_size, "max_iterations": 10**9, "checkpoint_every": 100,
                         "keep_checkpoints": 2, "validation_fraction": 0.1, "score_max_showers": 500,
                         "log_every": 25, "seed": 0}}


_SIMULATED: dict = {}


def _simulate(preset: str, seed: int, scale: float, particle: str):
    from caloforge.simulate.presets import simulate_preset

    key = (preset, seed, scale, particle)
    if key not in _SIMULATED:  # the baseline trains and is scored on the very same showers
        _SIMULATED[key] = simulate_preset(preset, seed=seed, scale=scale, particle=particle, workers=1)
    return _SIMULATED[key]


def fidelity_one(family: str, config, train_preset: str, train_scale: float, ref_preset: str,
                 ref_scale: float, particle: str, args, label: str | None = None) -> dict:
    from caloforge.evaluate import compare
    from caloforge.evaluate.report import write_report
    from caloforge.generate import generate, load_model
    from caloforge.train import train

    label = label or family
    out_dir = Path(args.output) / label
    t0 = time.perf_counter()
    train_data = _simulate(train_preset, args.seed, train_scale, particle)
    ref = _simulate(ref_preset, args.seed + 1000, ref_scale, particle)
    t_sim = time.perf_counter() - t0
    cfg = load_config(config).to_dict()
    cfg["training"]["tensorboard"] = False
    max_iterations = args.max_iterations
    if family == "bibae" and args.bibae_stages:
        cfg["model"]["stages"] = list(args.bibae_stages)
        max_iterations = min(max_iterations, sum(args.bibae_stages))
    t0 = time.perf_counter()
    c0 = time.process_time()
    res = train(cfg, train_data, out_dir / "run", max_time=f"{args.minutes}m", progress=False, threads=args.threads,
                device=args.device, max_iterations=max_iterations, budget_clock=args.budget_clock)
    t_train, cpu_train = time.perf_counter() - t0, time.process_time() - c0
    # BIB-AE's last checkpoint is the complete model (latent KDE + post-processor); the others' best by E_tot χ²
    chosen = res.last_checkpoint if family == "bibae" else (res.best_checkpoint or res.last_checkpoint)
    gen = load_model(chosen, device=args.device)
    t0 = time.perf_counter()
    fake = generate(gen, ref.incident_energy, conditions={k: v for k, v in ref.conditions.items()},
                    batch_size=256, seed=args.seed)
    t_gen = time.perf_counter() - t0
    result = compare(ref, fake, gen.geometry, classifier=True, fpd_kpd=True, seed=args.seed,
                     classifier_settings={"epochs": args.classifier_epochs, "n_hidden": 128})
    write_report(result, out_dir / "report", plots=not args.no_plots)
    m = result.metrics
    row = {"family": family, "label": label, "config": config if isinstance(config, str) else config["description"],
           "budget": f"{args.minutes} {args.budget_clock}-minutes, {args.threads} thread(s)", "train_preset": train_preset, "n_train": len(train_data),
           "reference_preset": ref_preset, "n_reference": len(ref), "iterations": res.iterations,
           "best_iteration": res.best_iteration, "stopped": res.stopped, "headline": m["headline"],
           "granular": {k: {kk: v.get(kk) for kk in ("chi2_ndf", "separation_power", "mean_reference",
                                                     "mean_generated")}
                        for k, v in m["granular"]["features"].items()},
           "hit_spectrum_separation": m["granular"]["hit_spectrum"]["separation_power"],
           "angular_response": m["granular"]["angular_response"],
           "points": [{"label": p["label"], "visible_mip": p["visible_mip"], "n_hits": p["n_hits"],
                       "seg": [p[f"seg{i}"] for i in (1, 2, 3)], "angular_response": p["angular_response"]}
                      for p in m["granular"]["points"]],
           "timings_s": {"simulate": t_sim, "train": t_train, "train_cpu": cpu_train, "generate": t_gen}}
    if family == "gan3d":
        row["regression"] = {"reference": _regress(gen.model, ref), "generated": _regress(gen.model, fake)}
    (out_dir / "summary.json").write_text(json.dumps(row, indent=1, default=float))
    return row


def fidelity(args) -> dict:
    rows = {}
    runs = []
    if "gan3d" in args.families:
        geo = load_config(args.gan_config).model.geometry
        runs.append(("gan3d", args.gan_config, args.gan_preset, args.gan_scale, args.gan_preset, args.gan_ref_scale,
                     "electron", geo))
    if "bibae" in args.families:
        geo = load_config(args.bibae_config).model.geometry
        runs.append(("bibae", args.bibae_config, "ild-angled", args.bibae_scale, "ild-angled-test",
                     args.bibae_ref_scale, "photon", geo))
    for family, config, train_preset, train_scale, ref_preset, ref_scale, particle, geo in runs:
        rows[family] = fidelity_one(family, config, train_preset, train_scale, ref_preset, ref_scale, particle, args)
        print(json.dumps(rows[family], indent=1, default=float)[:3000], flush=True)
        if args.baseline == "caloshowergan":
            label = f"caloshowergan-{geo}"
            rows[label] = fidelity_one("caloshowergan", caloshowergan_config(geo, particle, args.baseline_batch),
                                       train_preset, train_scale, ref_preset, ref_scale, particle, args, label)
            print(json.dumps(rows[label], indent=1, default=float)[:3000], flush=True)
        _SIMULATED.clear()
    print(markdown_table(rows), flush=True)
    return rows


_HEADLINE = (("E_tot χ²/ndf", "etot_chi2_ndf"), ("AUC low-level", "auc_low"), ("AUC high-level", "auc_high"),
             ("FPD ×10³", "fpd"), ("KPD ×10³", "kpd"))


def markdown_table(rows: dict) -> str:
    """The headline metrics and the granular observables' χ²/ndf, one column per model."""
    names = list(rows)
    lines = ["| | " + " | ".join(f"{rows[n]['label']} ({rows[n]['iterations']} it.)" for n in names) + " |",
             "|---" * (len(names) + 1) + "|"]

    def fmt(v, scale=1.0):
        return "–" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v * scale:.3g}"

    for title, key in _HEADLINE:
        scale = 1e3 if key in ("fpd", "kpd") else 1.0
        lines.append(f"| {title} | " + " | ".join(fmt(_headline(rows[n], key), scale) for n in names) + " |")
    feats = sorted({k for n in names for k in rows[n]["granular"]})
    for k in feats:
        lines.append(f"| {k} χ²/ndf | " + " | ".join(fmt(rows[n]["granular"].get(k, {}).get("chi2_ndf"))
                                                      for n in names) + " |")
    lines.append("| hit spectrum separation | " + " | ".join(fmt(rows[n]["hit_spectrum_separation"]) for n in names)
                 + " |")
    return "\n".join(lines)


def _headline(row: dict, key: str):
    h = row["headline"]
    aliases = {"etot_chi2_ndf": ("etot_chi2_ndf", "chi2_ndf_etot", "chi2_etot"),  # older rows: the other two
               "auc_low": ("auc_low", "classifier_auc_low", "auc_low_level"),
               "auc_high": ("auc_high", "classifier_auc_high", "auc_high_level"),
               "fpd": ("fpd", "FPD"), "kpd": ("kpd", "KPD")}
    for a in aliases[key]:
        if a in h:
            v = h[a]
            return v[0] if isinstance(v, (list, tuple)) else v
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="what", required=True)
    t = sub.add_parser("timing")
    t.add_argument("--configs", nargs="+", default=["gan3d-clic-cpu", "bibae-ild-angled-cpu", "gan3d-clic",
                                                    "gan3d-clic-angled", "bibae-ild-angled"])
    t.add_argument("--budget", type=float, default=3.0, help="seconds per (model, batch) measurement")
    t.add_argument("--max-batch", type=int, default=100)
    t.add_argument("--sim-showers", type=int, default=20)
    f = sub.add_parser("fidelity")
    f.add_argument("--families", nargs="+", default=["gan3d", "bibae"])
    f.add_argument("--minutes", type=float, default=4.0)
    f.add_argument("--max-iterations", type=int, default=10**9)
    f.add_argument("--gan-config", default="gan3d-clic-cpu")
    f.add_argument("--gan-preset", default="clic")
    f.add_argument("--gan-scale", type=float, default=0.1)
    f.add_argument("--gan-ref-scale", type=float, default=0.05)
    f.add_argument("--bibae-config", default="bibae-ild-angled-cpu")
    f.add_argument("--bibae-scale", type=float, default=0.04)
    f.add_argument("--bibae-ref-scale", type=float, default=0.05)
    f.add_argument("--bibae-stages", type=int, nargs=2, default=None,
                   help="override model.stages (main, post-processor iterations) for a reduced budget")
    f.add_argument("--budget-clock", choices=("wall", "cpu"), default="wall",
                   help="what --minutes counts: wall minutes, or CPU minutes of the training process")
    f.add_argument("--baseline", choices=("none", "caloshowergan"), default="none",
                   help="also train this family on the same grid, showers and budget")
    f.add_argument("--baseline-batch", type=int, default=128)
    f.add_argument("--classifier-epochs", type=int, default=10)
    f.add_argument("--no-plots", action="store_true")
    f.add_argument("--threads", type=int, default=1)
    f.add_argument("--device", default="cpu")
    f.add_argument("--seed", type=int, default=0)
    for p in (t, f):
        p.add_argument("--output", default="runs/bench_granular")
    args = ap.parse_args()
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    result = timing(args) if args.what == "timing" else fidelity(args)
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    (out / f"{args.what}.json").write_text(json.dumps({"date": stamp, **{"result": result}}, indent=1, default=float))
    print(f"written {out / (args.what + '.json')} ({stamp})")


if __name__ == "__main__":
    main()
