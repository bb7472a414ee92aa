"""A real hyperparameter study of the demo CaloShowerGAN on the simulator's ds1-photons preset.

1. simulates the training set (preset × --scale, seed 0) and an independent held-out set
   (preset × --holdout-scale, seed 1), once (kept in --output);
2. runs ``caloforge tune`` (the CLI, in a subprocess) over ``benchmarks/tune_demo_space.yaml``
   on the shipped ``demo`` config: trial 0 is the demo's own settings, every trial trains
   --seeds seeds for --max-iterations iterations (with a --trial-time safety limit), the
   objective is the mean over seeds of the best checkpoint's E_tot χ², median pruning;
3. prints ``caloforge tune --report``;
4. evaluates, for the demo config (trial 0) and the best trial, every seed's best checkpoint
   against the held-out set (E_tot χ²/ndf, classifier AUC low/high level, FPD/KPD): the
   seed scatter of the physics metrics, not only of the objective.  JSON → --output/summary.json.

Scaled-down run used for docs/benchmarks-log.md (≈ 30 min on a shared 2-core CPU):
    nice -n 10 .venv/bin/python benchmarks/bench_tune.py --trials 10 --seeds 2 --max-iterations 2000
Full study of the issue (20 trials × 3 seeds, a few minutes each):
    .venv/bin/python benchmarks/bench_tune.py --trials 20 --seeds 3 --max-iterations 8000 --trial-time 30m
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--output", default="runs/tune-demo")
    ap.add_argument("--scale", type=float, default=0.1)
    ap.add_argument("--holdout-scale", type=float, default=0.05)
    ap.add_argument("--trials", type=int, default=10)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--max-iterations", type=int, default=2000)
    ap.add_argument("--trial-time", default="8m")
    ap.add_argument("--startup-trials", type=int, default=3)
    ap.add_argument("--checkpoint-every", type=int, default=None, help="override the demo config's 500 (pruning "
                    "compares trials at the same checkpoints)")
    ap.add_argument("--timeout", default=None, help="start no new trial after this long (caloforge tune --timeout)")
    ap.add_argument("--no-classifier", action="store_true")
    args = ap.parse_args()

    from caloforge import io
    from caloforge.evaluate import compare
    from caloforge.generate import generate, load_model
    from caloforge.simulate import simulate_preset

    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    train_file, holdout_file = out / "train.h5", out / "holdout.h5"
    t0 = time.perf_counter()
    if not train_file.exists():
        d = simulate_preset("ds1-photons", seed=0, scale=args.scale)
        io.write_showers(train_file, d.incident_energy, d.showers, d.conditions)
    if not holdout_file.exists():
        d = simulate_preset("ds1-photons", seed=1, scale=args.holdout_scale)
        io.write_showers(holdout_file, d.incident_energy, d.showers, d.conditions)
    t_sim = time.perf_counter() - t0
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cli = [sys.executable, "-m", "caloforge", "tune"]
    base = "demo"
    if args.checkpoint_every:
        import yaml

        from caloforge.models import load_config

        cfg = load_config("demo").to_dict()
        cfg["training"]["checkpoint_every"] = args.checkpoint_every
        base = str(out / "demo_base.yaml")
        Path(base).write_text(yaml.safe_dump(cfg, sort_keys=False))
    cmd = cli + ["--config", base, "--space", str(HERE / "tune_demo_space.yaml"), "--data", str(train_file),
                 "-o", str(out / "study"), "--trials", str(args.trials), "--seeds", str(args.seeds),
                 "--max-iterations", str(args.max_iterations), "--trial-time", args.trial_time,
                 "--startup-trials", str(args.startup_trials), "--threads", "1"]
    if args.timeout:
        cmd += ["--timeout", args.timeout]
    print("$", " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=env)
    t_tune = time.perf_counter() - t0
    subprocess.run(cli + ["--report", "-o", str(out / "study")], check=True, env=env)

    import optuna

    study = optuna.load_study(study_name="tune_demo_space", storage=f"sqlite:///{(out / 'study' / 'study.db').resolve()}")
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    best = study.best_trial
    holdout = io.read_showers(holdout_file, geometry="ds1-photons")
    rows = {}
    t0 = time.perf_counter()
    for label, trial in (("demo config (trial 0)", trials[0]), (f"best (trial {best.number})", best)):
        trial_dir = Path(trial.user_attrs["trial_dir"])
        per_seed = []
        for seed_dir in sorted(trial_dir.glob("seed-*")):
            if not (seed_dir / "best").exists():
                continue
            seed = int(seed_dir.name.split("-")[1])
            gen = generate(load_model(seed_dir / "best"), holdout.incident_energy, seed=seed)
            res = compare(holdout, gen, "ds1-photons", classifier=not args.no_classifier, seed=seed, per_energy=False)
            m, h = res.metrics, res.headline
            clf = m.get("classifier") or {}
            scores = json.loads((seed_dir / "best" / "config.json").read_text())
            per_seed.append({"seed": seed, "best_iteration": scores.get("iteration"),
                             "chi2_etot_validation": scores["scores"]["chi2_etot"],
                             "etot_chi2_ndf": h["etot_chi2_ndf"], "fpd_x1e3": (h["fpd"] or np.nan) * 1e3,
                             "kpd_x1e3": (h["kpd"] or np.nan) * 1e3,
                             "auc_low": (clf.get("low") or {}).get("auc"), "auc_high": (clf.get("high") or {}).get("auc")})
        rows[label] = {"trial": trial.number, "state": trial.state.name, "params": trial.params,
                       "objective": trial.value, "objective_std": trial.user_attrs.get("std"), "seeds": per_seed}
    t_eval = time.perf_counter() - t0
    counts = {}
    for t in trials.values():
        counts[t.state.name] = counts.get(t.state.name, 0) + 1
    summary = {"command": " ".join(cmd), "counts": counts, "rows": rows,
               "timings_s": {"simulate": t_sim, "tune": t_tune, "evaluate": t_eval}}
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))

    def ms(values):
        v = np.asarray([x for x in values if x is not None], dtype=float)
        return f"{v.mean():.3g} ± {v.std(ddof=1):.2g}" if len(v) > 1 else (f"{v[0]:.3g}" if len(v) else "-")

    print(f"\ntrials: {counts}; tune {t_tune / 60:.1f} min, evaluation {t_eval / 60:.1f} min")
    print("| config | objective (val. E_tot χ²) | E_tot χ²/ndf (held out) | AUC low | AUC high | FPD ×10³ | KPD ×10³ |")
    print("|---|---|---|---|---|---|---|")
    for label, r in rows.items():
        s = r["seeds"]
        print(f"| {label} | {ms([x['chi2_etot_validation'] for x in s])} | {ms([x['etot_chi2_ndf'] for x in s])} | "
              f"{ms([x['auc_low'] for x in s])} | {ms([x['auc_high'] for x in s])} | {ms([x['fpd_x1e3'] for x in s])} | "
              f"{ms([x['kpd_x1e3'] for x in s])} |")
    for label, r in rows.items():
        print(f"{label}: params {r['params']}")
        for x in r["seeds"]:
            print(f"   seed {x['seed']}: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                                     for k, v in x.items() if k != "seed"))


if __name__ == "__main__":
    main()
