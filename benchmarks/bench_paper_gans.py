"""Fixed-budget fidelity and speed of CaloGAN and the ATLAS two-critic WGAN, next to CaloShowerGAN.

Every model of a comparison trains on the same simulator sample for the same CPU time
(``--minutes`` each, one thread) and is evaluated on the same held-out sample (another
simulator seed): E_tot χ²/ndf, the CaloChallenge classifier AUC (low / high level),
FPD / KPD ×10³ and the paper's own observables (:mod:`caloforge.evaluate.paper_observables`).

* ``calogan``: e+, γ, π+ at 1–100 GeV (preset ``calogan``), one CaloGAN per particle
  (``calogan-cpu``) and CaloShowerGAN adapted to the geometry (``demo`` architecture,
  ``geometry: calogan``) for ``--baseline-particles``; the particle-classifier proxy
  over the particles trained.
* ``atlas``: photons at the 9 energies with impact η (preset ``atlas-gan``),
  ``atlas-gan-cpu`` with ``--seeds`` seeds (mean ± spread), CaloShowerGAN conditioned
  on E and η; the interpolation test at the never-trained 25 GeV next to 16 / 32 GeV.
* ``speed``: per-shower generation time vs batch size (1 … 10⁵) on the CPU.

Full-budget versions (GPU, paper configs): ``--config calogan-positrons`` /
``--config atlas-gan-photons``, ``--scale 1`` and ``--minutes`` of hours.

Budgets are CPU-minutes of the benchmark process (``--budget-clock cpu``, the default), so
models compared with each other get the same computation on a loaded machine.

Run:  nice -n 10 .venv/bin/python benchmarks/bench_paper_gans.py calogan --minutes 10 --scale 0.1 --holdout-scale 0.02
      nice -n 10 .venv/bin/python benchmarks/bench_paper_gans.py atlas --minutes 10 --scale 0.1 --holdout-scale 0.02
      nice -n 10 .venv/bin/python benchmarks/bench_paper_gans.py speed          # 1 … 10^5, blocks of --chunk 1000
      .venv/bin/python benchmarks/bench_paper_gans.py tables     # markdown of the JSON results
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from caloforge.evaluate import compare
from caloforge.evaluate.metrics import total_energy_chi2
from caloforge.evaluate.paper_observables import particle_classifier_proxy
from caloforge.generate import generate, load_model
from caloforge.io import ShowerData
from caloforge.models import load_config
from caloforge.simulate.paper_data import simulate_atlas_gan, simulate_calogan
from caloforge.train import train

CALOGAN_PARTICLES = ("positron", "photon", "pion")


def baseline_config(geometry: str, energy_range: list[float], conditions: dict, particle: str) -> dict:
    """CaloShowerGAN's demo architecture adapted to another geometry (same CPU-sized widths)."""
    cfg = load_config("demo").to_dict()
    cfg["model"].update(geometry=geometry, energy_range=energy_range, conditions=conditions, particle=particle)
    cfg["description"] = f"CaloShowerGAN (demo architecture) on {geometry}"
    return cfg


DEVICE = "cpu"


BUDGET_CLOCK = "cpu"


def _run_config(name_or_dict, out: Path, data: ShowerData, minutes: float, seed: int) -> tuple[Path, dict]:
    """Train for ``minutes`` of the budget clock (CPU seconds of this process by default, one thread);
    returns the best checkpoint and what the run cost (iterations, CPU and wall seconds, load)."""
    cfg = load_config(name_or_dict).to_dict()
    cfg["training"].update(max_iterations=10**9, tensorboard=False, checkpoint_every=200)
    t, c = time.perf_counter(), time.process_time()
    res = train(cfg, data, out, max_time=minutes * 60, budget_clock=BUDGET_CLOCK, progress=False, seed=seed,
                threads=1, device=DEVICE)
    run = {"iterations": res.iterations, "best_iteration": res.best_iteration, "stopped": res.stopped,
           "cpu_s": time.process_time() - c, "wall_s": time.perf_counter() - t, "load_1min": os.getloadavg()[0]}
    print(f"  trained {out.name}: {res.iterations} iterations, {run['cpu_s']:.0f} CPU s in {run['wall_s']:.0f} s "
          f"wall (load {run['load_1min']:.1f}), best χ² {res.best_score:.3g} at {res.best_iteration}", flush=True)
    return res.best_checkpoint, run


def _save(args, results: dict) -> Path:
    """Write the results so far (atomic): a long run killed late keeps its finished models."""
    path = Path(args.output) / f"{args.what}-{Path(args.config).stem}{'-' + args.tag if args.tag else ''}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=1, default=lambda o: None if o is None else float(o)))
    tmp.replace(path)
    return path


def _scores(model_path: Path, ref: ShowerData, geometry: str, classifier: bool = True,
            training: ShowerData | None = None) -> dict:
    gen = generate(load_model(model_path, device=DEVICE), ref.incident_energy, conditions=ref.conditions or None,
                   seed=1)
    res = compare(ref, gen, geometry, classifier=classifier, fpd_kpd=True, per_energy=False, training=training,
                  classifier_settings={"epochs": 30})
    m = res.metrics
    clf = m.get("classifier") or {}
    chi2 = total_energy_chi2(ref.incident_energy, ref.showers.sum(1), gen.incident_energy, gen.showers.sum(1))
    return {"etot_chi2": chi2, "etot_chi2_ndf": res.headline.get("etot_chi2_ndf"),
            "auc_low": (clf.get("low") or {}).get("auc"), "auc_high": (clf.get("high") or {}).get("auc"),
            "fpd_x1e3": (m.get("fpd") or {}).get("value_x1e3"), "kpd_x1e3": (m.get("kpd") or {}).get("value_x1e3"),
            "paper": m.get("paper"), "generated": gen}


def _paper_summary(paper: dict) -> dict:
    if paper is None:
        return {}
    if paper["paper"] == "calogan":
        f = paper["features"]
        out = {k: f[k]["chi2_ndf"] for k in f}
        if "memorisation" in paper:
            out["nn_median_ratio"] = paper["memorisation"]["median_ratio"]
        return out
    return {f"{p['energy_gev']:g}GeV": {k: p[k]["chi2_ndf"] for k in ("etot_gev", "Eratio", "f3", "weta1")}
            | {"res_ref": p["resolution_reference"], "res_gen": p["resolution_generated"]}
            for p in paper["energy_points"]}


def bench_calogan(args) -> dict:
    out, results = Path(args.output) / "calogan", {}
    refs, gens = {}, {}
    for particle in args.particles:
        data = simulate_calogan(particle, seed=0, scale=args.scale)
        ref = simulate_calogan(particle, seed=1, scale=args.holdout_scale)
        refs[particle] = ref
        print(f"{particle}: {len(data)} training, {len(ref)} held-out showers", flush=True)
        models = {"calogan": args.config} if "calogan" in args.models else {}
        if particle in args.baseline_particles and "caloshowergan" in args.models:
            models["caloshowergan"] = baseline_config("calogan", [1e3, 1e5], {"incident_energy": "log"}, particle)
        for name, cfg in models.items():
            path, run = _run_config(cfg, out / f"{particle}-{name}", data, args.minutes, 0)
            s = _scores(path, ref, "calogan", training=data)
            s["run"] = run
            if name == "calogan":
                gens[particle] = s["generated"]
            s.pop("generated")
            s["paper_chi2_ndf"] = _paper_summary(s.pop("paper"))
            results[f"{particle}/{name}"] = s
            _save(args, results)
            print(json.dumps({f"{particle}/{name}": s}, default=float)[:600], flush=True)
    if len(gens) >= 2:
        results["classifier_proxy"] = particle_classifier_proxy(refs, gens, epochs=20)
        print(results["classifier_proxy"], flush=True)
    return results


def _mean_spread(values) -> dict:
    v = [float(x) for x in values if x is not None]
    return {"mean": float(np.mean(v)) if v else None, "std": float(np.std(v, ddof=1)) if len(v) > 1 else None,
            "n": len(v)}


def bench_atlas(args) -> dict:
    out, results = Path(args.output) / "atlas", {}
    data = simulate_atlas_gan("atlas-gan", seed=0, scale=args.scale)
    ref = simulate_atlas_gan("atlas-gan", seed=1, scale=args.holdout_scale)
    ref25 = simulate_atlas_gan("atlas-gan-25gev", seed=2, scale=args.holdout_scale * 0.98)
    print(f"atlas: {len(data)} training, {len(ref)} held-out, {len(ref25)} at 25 GeV", flush=True)
    cond = {"incident_energy": "log", "impact_eta": "linear"}
    runs = [("atlas_gan", args.config, s) for s in args.seeds]
    if args.baseline:
        runs.append(("caloshowergan", baseline_config("atlas-4layer", [1e3, 262e3], cond, "photon"), args.seeds[0]))
    for name, cfg, seed in runs:
        path, run = _run_config(cfg, out / f"{name}-seed{seed}", data, args.minutes, seed)
        s = _scores(path, ref, "atlas-4layer")
        s["run"] = run
        s.pop("generated")
        s["paper_chi2_ndf"] = _paper_summary(s.pop("paper"))
        # interpolation: 25 GeV (never trained on) next to the trained 16 and 32 GeV points
        interp = {}
        for e_gev, sample in ((25, ref25), (16, ref), (32, ref)):
            sel = np.isclose(sample.incident_energy, e_gev * 1e3)
            sub = ShowerData(sample.incident_energy[sel], sample.showers[sel],
                             {k: v[sel] for k, v in sample.conditions.items()})
            sc = _scores(path, sub, "atlas-4layer")
            interp[f"{e_gev}GeV"] = {"etot_chi2": sc["etot_chi2"], "auc_low": sc["auc_low"],
                                     "auc_high": sc["auc_high"]}
        s["interpolation"] = interp
        results[f"{name}/seed{seed}"] = s
        _save(args, results)
        print(json.dumps({f"{name}/seed{seed}": s}, default=float)[:800], flush=True)
    results.update(seed_stats(results))
    return results


def seed_stats(results: dict) -> dict:
    """Mean ± spread over the ``atlas_gan/seed*`` runs in ``results`` (the paper's seed study)."""
    keys = ("etot_chi2", "etot_chi2_ndf", "auc_low", "auc_high", "fpd_x1e3", "kpd_x1e3")
    seeds = [r for k, r in results.items() if k.startswith("atlas_gan/seed") and "interpolation" in r]
    if not seeds:
        return {}
    return {"atlas_gan/seed_stats": {k: _mean_spread([r[k] for r in seeds]) for k in keys},
            "atlas_gan/interpolation_stats": {
                p: {k: _mean_spread([r["interpolation"][p][k] for r in seeds]) for k in ("etot_chi2", "auc_low", "auc_high")}
                for p in ("16GeV", "25GeV", "32GeV")}}


SPEED_MODELS = {  # name → (config or baseline geometry, what it is)
    "calogan-positrons": ("calogan-positrons", "CaloGAN, paper widths"),
    "calogan-cpu": ("calogan-cpu", "CaloGAN, CPU config"),
    "caloshowergan-paper@calogan": ("caloshowergan-photons@calogan", "CaloShowerGAN, paper widths, calogan geometry"),
    "caloshowergan-demo@calogan": ("demo@calogan", "CaloShowerGAN demo arch., calogan geometry"),
    "atlas-gan-photons": ("atlas-gan-photons", "ATLAS GAN, paper widths"),
    "atlas-gan-cpu": ("atlas-gan-cpu", "ATLAS GAN, CPU config"),
    "caloshowergan-paper@atlas-4layer": ("caloshowergan-photons@atlas-4layer",
                                         "CaloShowerGAN, paper widths, atlas-4layer"),
    "caloshowergan-demo@atlas-4layer": ("demo@atlas-4layer", "CaloShowerGAN demo arch., atlas-4layer"),
}
GEOMETRY_SETUP = {  # energy range and conditions of each geometry's paper data set
    "calogan": ([1e3, 1e5], {"incident_energy": "linear"}),
    "atlas-4layer": ([1e3, 262e3], {"incident_energy": "log", "impact_eta": "linear"}),
}


def _speed_generator(spec: str):
    """An untrained :class:`ShowerGenerator` of ``spec`` (a config, or ``CONFIG@GEOMETRY`` for
    CaloShowerGAN adapted to a geometry); speed does not depend on the weights."""
    from caloforge.generate import ShowerGenerator
    from caloforge.geometry import load_geometry
    from caloforge.models import fit

    if "@" in spec:
        name, geometry = spec.split("@")
        cfg = load_config(name).to_dict()
        e_range, cond = GEOMETRY_SETUP[geometry]
        cfg["model"].update(geometry=geometry, energy_range=e_range, conditions=cond, particle="photon",
                            energy_condition="incident")
        cfg = load_config(cfg).model
    else:
        cfg = load_config(spec).model
    geo = load_geometry(cfg.geometry)
    e_range, _ = GEOMETRY_SETUP[cfg.geometry]
    e = torch.tensor(e_range, dtype=torch.float64)
    cond = {"impact_eta": torch.tensor([0.2, 0.25])} if "impact_eta" in cfg.conditions else {}
    torch.manual_seed(0)
    model = fit(cfg, torch.rand(2, geo.n_voxels) * e[:, None].float() / geo.n_voxels, e, cond).eval()
    return ShowerGenerator(model, Path(f"<untrained {spec}>"), geo.name, geo.n_voxels, e_range[0], e_range[1], 0,
                           None, {"name": cfg.name})


def bench_speed(args) -> dict:
    """Per-shower generation time vs request size (the CaloGAN paper's speed figure), CPU, one thread.

    A request of N showers goes through :func:`caloforge.generate.generate` (PyTorch engine) with
    ``batch_size=args.chunk``: above the chunk the request is generated block by block, so memory
    stays that of one chunk (CaloGAN's per-layer activations would need 0.7–7 GB at 10⁴–10⁵ in one
    go).  Reported: CPU time of this process per shower (what one idle core would take: on a shared
    machine the wall time also counts the waiting) and wall time, with the load."""
    import resource

    from caloforge.generate import generate

    torch.set_num_threads(args.threads)
    names = args.speed_models or list(SPEED_MODELS)
    out = {"chunk": args.chunk, "threads": args.threads, "engine": "pytorch", "models": {}}
    for name in names:
        spec = SPEED_MODELS[name][0] if name in SPEED_MODELS else name
        gen = _speed_generator(spec)
        rows = {}
        for batch in args.batches:
            energies = np.full(batch, 5e4)
            cond = {"impact_eta": np.full(batch, 0.22)} if "impact_eta" in gen.condition_names else {}
            generate(gen, energies[:10], conditions={k: v[:10] for k, v in cond.items()}, engine="pytorch",
                     batch_size=args.chunk)  # warm-up
            reps = max(1, min(50, 2000 // batch))
            t, c = time.perf_counter(), time.process_time()
            for _ in range(reps):
                generate(gen, energies, conditions=cond, batch_size=args.chunk, seed=0, engine="pytorch")
            cpu = (time.process_time() - c) / (reps * batch)
            wall = (time.perf_counter() - t) / (reps * batch)
            rows[batch] = {"cpu_ms": cpu * 1e3, "wall_ms": wall * 1e3, "reps": reps, "load_1min": os.getloadavg()[0],
                           "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
            print(f"{name} batch {batch:>6}: {cpu * 1e3:.4f} CPU ms/shower, {wall * 1e3:.4f} wall ms/shower "
                  f"(load {rows[batch]['load_1min']:.1f}, max RSS {rows[batch]['max_rss_mb']:.0f} MB)", flush=True)
        out["models"][name] = rows
        _save(args, out)
        del gen
    return out


def _f(v, d: int = 3) -> str:
    return "–" if v is None else f"{v:.{d}g}"


def tables(args) -> dict:
    """Markdown tables of the JSON results in ``--output`` (for docs/benchmarks.md)."""
    out = Path(args.output)
    cal = {}  # calogan-*.json: one file, or the particles / models split over processes (--tag)
    for f in sorted(out.glob("calogan-*.json")):
        cal.update(json.loads(f.read_text()))
    at = {}  # atlas-*.json: one file, or several runs split by seeds (--tag) merged here
    for f in sorted(out.glob("atlas-*.json")):
        at.update({k: v for k, v in json.loads(f.read_text()).items() if not k.startswith("atlas_gan/") or "/seed" in k
                   and not k.endswith("_stats")})
    at.update(seed_stats(at))
    head = "| model | iterations | CPU s | wall s | E_tot χ²/ndf | AUC low | AUC high | FPD ×10³ | KPD ×10³ |"
    rows = [head, "|---|---|---|---|---|---|---|---|---|"]
    for k, r in list(cal.items()) + list(at.items()):
        if isinstance(r, dict) and "etot_chi2_ndf" in r and not k.endswith("_stats"):
            run = r.get("run") or {}
            rows.append(f"| {k} | {run.get('iterations', '–')} | {_f(run.get('cpu_s'))} | {_f(run.get('wall_s'))} | "
                        f"{_f(r['etot_chi2_ndf'])} | {_f(r['auc_low'])} | {_f(r['auc_high'])} | "
                        f"{_f(r['fpd_x1e3'])} | {_f(r['kpd_x1e3'])} |")
    print("\n".join(rows))
    keys = ["etot_gev", "frac_layer_0", "frac_layer_1", "frac_layer_2", "shower_depth", "shower_depth_width",
            "lateral_width_layer_0", "lateral_width_layer_1", "lateral_width_layer_2", "sparsity_layer_0",
            "sparsity_layer_1", "sparsity_layer_2", "nn_median_ratio"]
    print("\n| CaloGAN observable χ²/ndf | " + " | ".join(k for k in cal if "paper_chi2_ndf" in cal[k]) + " |")
    print("|---|" + "---|" * sum("paper_chi2_ndf" in v for v in cal.values()))
    for key in keys:
        print(f"| {key} | " + " | ".join(_f(v["paper_chi2_ndf"].get(key)) for v in cal.values()
                                      if "paper_chi2_ndf" in v) + " |")
    if "classifier_proxy" in cal:
        print("\nclassifier proxy:", {k: (round(v, 3) if isinstance(v, float) else v)
                                      for k, v in cal["classifier_proxy"].items()})
    for k, r in at.items():
        if isinstance(r, dict) and "paper_chi2_ndf" in r:
            print(f"\n{k}: | E | E_tot χ²/ndf | σ/μ ref | σ/μ gen | Eratio | f3 | weta1 |")
            for e, p in r["paper_chi2_ndf"].items():
                print(f"| {e} | {_f(p['etot_gev'])} | {_f(p['res_ref'])} | {_f(p['res_gen'])} | {_f(p['Eratio'])} | "
                      f"{_f(p['f3'])} | {_f(p['weta1'])} |")
            print("interpolation:", {e: {q: _f(v) for q, v in d.items()} for e, d in r["interpolation"].items()})
    for k in ("atlas_gan/seed_stats", "atlas_gan/interpolation_stats"):
        if k in at:
            print(f"\n{k}: {json.dumps(at[k])}")
    for f in sorted(out.glob("speed-*.json")):  # ms per shower vs request size, CPU (and wall)
        sp = json.loads(f.read_text())
        batches = sorted({int(b) for rows in sp["models"].values() for b in rows})
        print(f"\n{f.name} (chunk {sp['chunk']}, {sp['threads']} thread): CPU ms/shower [wall ms/shower]")
        print("| model | " + " | ".join(str(b) for b in batches) + " |")
        print("|---|" + "---|" * len(batches))
        for name, rows in sp["models"].items():
            print(f"| {name} | " + " | ".join(
                f"{_f(rows[str(b)]['cpu_ms'])} [{_f(rows[str(b)]['wall_ms'], 2)}]" if str(b) in rows else "–"
                for b in batches) + " |")
    return {}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=["calogan", "atlas", "speed", "tables"])
    ap.add_argument("--config", default=None)
    ap.add_argument("--minutes", type=float, default=10.0, help="training budget per model (of --budget-clock)")
    ap.add_argument("--budget-clock", default="cpu", choices=["cpu", "wall"],
                    help="cpu: CPU-minutes of this process (fair on a shared machine); wall: wall minutes")
    ap.add_argument("--scale", type=float, default=0.03)
    ap.add_argument("--holdout-scale", type=float, default=0.01)
    ap.add_argument("--particles", nargs="+", default=list(CALOGAN_PARTICLES))
    ap.add_argument("--baseline-particles", nargs="*", default=["positron"])
    ap.add_argument("--models", nargs="+", default=["calogan", "caloshowergan"], choices=["calogan", "caloshowergan"],
                    help="calogan: which models to train (split over processes with --tag)")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--no-baseline", dest="baseline", action="store_false",
                    help="atlas: skip CaloShowerGAN (e.g. when the seeds are split over processes)")
    ap.add_argument("--tag", default="", help="suffix of the JSON file (runs split over processes; "
                    "'tables' merges atlas-*.json)")
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 10, 100, 1000, 10000, 100000])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--chunk", type=int, default=1000,
                    help="speed: showers per generate() block inside a request (bounds memory)")
    ap.add_argument("--speed-models", nargs="*", default=None,
                    help=f"speed: models to time (default all: {', '.join(SPEED_MODELS)})")
    ap.add_argument("--output", default="runs/paper-gans")
    ap.add_argument("--device", default="cpu", help="training / generation device (cuda for the full budget)")
    args = ap.parse_args()
    global DEVICE
    DEVICE = args.device
    if args.what == "tables":
        tables(args)
        return
    if args.config is None:
        args.config = {"calogan": "calogan-cpu", "atlas": "atlas-gan-cpu", "speed": "generation"}[args.what]
    global BUDGET_CLOCK
    BUDGET_CLOCK = args.budget_clock
    res = {"calogan": bench_calogan, "atlas": bench_atlas, "speed": bench_speed}[args.what](args)
    res["meta"] = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "minutes": args.minutes,
                   "budget_clock": args.budget_clock, "scale": args.scale, "holdout_scale": args.holdout_scale,
                   "load_1min_end": os.getloadavg()[0], "cpus": os.cpu_count()}
    print(f"wrote {_save(args, res)}")


if __name__ == "__main__":
    main()
