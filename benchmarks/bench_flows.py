"""Flow-based models against the CaloShowerGAN demo config, side by side, at the same CPU budget.

Protocol (issue 11): simulate one ``ds1-photons`` training set and an independent held-out
set (another seed); train every model on the same file for the same wall-clock budget on
the same number of threads; generate one shower per held-out shower (``--like``); evaluate
each with the full evaluator and the CaloChallenge classifier (``caloforge evaluate
--classifier``); time generation per shower at batch 1, 100 and 10 000 on one thread,
and the flow-matching teacher at 1, 4, 16 and 64 ODE steps.  The student is distilled
from the flow-matching run after it, with the same budget again (its total cost is the
teacher's plus its own).

The full-size figure of the issue (60 minutes per model on 2 cores)::

    .venv/bin/python benchmarks/bench_flows.py --minutes 60 --threads 2 --scale 0.5 --holdout-scale 0.1 \\
        --curve-steps 1,4,16,64 --output runs/bench-flows-60

Prints one markdown table (and writes ``results.json`` / ``table.md`` in ``--output``).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import time
from pathlib import Path

import numpy as np

MODELS = {  # name in the table → shipped config
    "CaloShowerGAN demo": "demo",
    "caloflow": "caloflow-photons",
    "flow matching": "flow-matching-photons",
    "student (of flow matching)": "student-photons",
}
ANCHORS = Path(__file__).resolve().parents[2] / "shared" / "anchors" / "calochallenge_2022_final_results.csv"
TIMING_SHOWERS = {1: 200, 100: 2_000, 10_000: 10_000}


def _log(msg: str) -> None:
    print(time.strftime("%H:%M:%S"), msg, flush=True)


def _simulate(out: Path, scale: float, holdout_scale: float, seed: int) -> tuple[Path, Path]:
    from caloforge.simulate import simulate_preset_to_file

    train_file, holdout_file = out / "train.h5", out / "holdout.h5"
    for path, sc, sd in ((train_file, scale, seed), (holdout_file, holdout_scale, seed + 1000)):
        if not path.exists():
            _log(f"simulating {path.name} (ds1-photons, scale {sc}, seed {sd})")
            simulate_preset_to_file(path, "ds1-photons", seed=sd, scale=sc, workers=1)
    return train_file, holdout_file


def _train(config: str, train_file: Path, run: Path, minutes: float, threads: int, teacher: Path | None) -> dict:
    from caloforge.config import load_config
    from caloforge.train import train

    cfg = load_config(config).to_dict()
    if teacher is not None:
        cfg["model"]["teacher"] = str(teacher)
    if run.exists() and (run / "best").exists():
        _log(f"{run.name}: already trained, reusing")
    else:
        _log(f"training {config} for {minutes:g} min on {threads} thread(s)")
        res = train(cfg, train_file, run, max_time=f"{minutes * 60:.0f}s", progress=False, threads=threads)
        _log(f"  {res.message}; best iteration {res.best_iteration}")
    from caloforge.checkpoint import latest_checkpoint

    last = json.loads((latest_checkpoint(run) / "config.json").read_text())
    best = json.loads((run / "best" / "config.json").read_text())
    return {"iterations": last["iteration"], "best_iteration": best["iteration"],
            "parameters": _n_params(run / "best")}


def _n_params(path: Path) -> int:
    from safetensors import safe_open

    with safe_open(str(path / "model.safetensors"), framework="pt") as f:
        return int(sum(np.prod(f.get_slice(k).get_shape()) for k in f.keys() if not k.endswith(("mask", "order",
                                                                                                "frequencies"))))


def _evaluate(holdout: Path, generated: Path, out: Path) -> dict:
    from caloforge.evaluate import compare
    from caloforge.evaluate.compare import json_safe

    if (out / "metrics.json").exists():  # a rerun reuses finished evaluations
        m = json.loads((out / "metrics.json").read_text())
    else:
        m = json_safe(compare(holdout, generated, "ds1-photons", classifier=True, seed=0).metrics)
        (out / "metrics.json").write_text(json.dumps(m))
    clf = m.get("classifier") or {}
    layers = [v["inclusive"]["chi2_ndf"] for k, v in m["features"].items()
              if k.startswith("E_layer_") and v.get("inclusive") and v["inclusive"]["chi2_ndf"] is not None]
    return {"auc_low": (clf.get("low") or {}).get("auc"), "auc_high": (clf.get("high") or {}).get("auc"),
            "fpd_x1e3": (m.get("fpd") or {}).get("value", math.nan) * 1e3,
            "kpd_x1e3": (m.get("kpd") or {}).get("value", math.nan) * 1e3,
            "etot_chi2_ndf": m["total_energy"]["chi2_ndf"],
            "layer_chi2_ndf": float(np.mean(layers)) if layers else None}


def _generate(model: Path, holdout: Path, out: Path, sampling: dict | None) -> Path:
    from caloforge.generate import generate_to_file, load_model, reference_energies

    energy, conditions, _ = reference_energies(holdout)
    path = out / "generated.h5"
    if not path.exists():
        generate_to_file(load_model(model), path, energy, conditions=conditions, seed=1, sampling=sampling)
    return path


def _timing(model: Path, sampling: dict | None) -> dict:
    import torch

    from caloforge.generate import generate, load_model

    torch.set_num_threads(1)
    gen = load_model(model)
    rng = np.random.default_rng(0)
    row = {}
    for batch, n in TIMING_SHOWERS.items():
        e = 256.0 * 2.0 ** rng.integers(0, 15, n)
        generate(gen, e[: min(n, 2 * batch, 1000)], batch_size=batch, sampling=sampling)  # warm-up
        t0 = time.perf_counter()
        generate(gen, e, batch_size=batch, sampling=sampling)
        row[f"ms_b{batch}"] = (time.perf_counter() - t0) / n * 1e3
    return row


def _fmt(v, spec: str) -> str:
    return "–" if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, spec)


def table(results: list[dict]) -> str:
    head = ("| model | params | iterations | AUC low | AUC high | FPD ×10³ | KPD ×10³ | E_tot χ²/ndf | "
            "layer E χ²/ndf | ms/shower b1 | b100 | b10000 |")
    lines = [head, "|" + "---|" * 12]
    for r in results:
        f, t = r.get("fidelity") or {}, r.get("timing") or {}
        lines.append(f"| {r['label']} | {_fmt(r.get('parameters'), ',')} | {_fmt(r.get('iterations'), ',')} | "
                     f"{_fmt(f.get('auc_low'), '.3f')} | {_fmt(f.get('auc_high'), '.3f')} | "
                     f"{_fmt(f.get('fpd_x1e3'), '.1f')} | {_fmt(f.get('kpd_x1e3'), '.2f')} | "
                     f"{_fmt(f.get('etot_chi2_ndf'), '.1f')} | {_fmt(f.get('layer_chi2_ndf'), '.1f')} | "
                     f"{_fmt(t.get('ms_b1'), '.3g')} | {_fmt(t.get('ms_b100'), '.3g')} | "
                     f"{_fmt(t.get('ms_b10000'), '.3g')} |")
    if ANCHORS.exists():
        with ANCHORS.open() as fh:
            for row in csv.DictReader(fh):
                if row["dataset"].startswith("ds1_photons") or row["dataset"].startswith("ds1-photons"):
                    lines.append(f"| CaloChallenge {row['model']} | | | {row['auc_low_level']} | "
                                 f"{row['auc_high_level']} | {row['fpd_x1e3']} | {row['kpd_x1e3']} | | | "
                                 f"{row.get('ms_per_shower_cpu_b1', '')} | {row.get('ms_per_shower_cpu_b100', '')} | "
                                 f"{row.get('ms_per_shower_cpu_b10000', '')} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=60.0, help="training budget per model")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--scale", type=float, default=0.5, help="training set: fraction of the ds1-photons preset")
    ap.add_argument("--holdout-scale", type=float, default=0.1, help="held-out set: fraction of the preset")
    ap.add_argument("--models", default=",".join(MODELS.values()), help="comma-separated shipped configs")
    ap.add_argument("--curve-steps", default="1,4,16,64", help="ODE steps evaluated for the flow-matching model")
    ap.add_argument("--timing-steps", default="1,4,16,64", help="ODE steps timed for the flow-matching model")
    ap.add_argument("--no-timing", action="store_true")
    ap.add_argument("--output", default="runs/bench-flows")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    train_file, holdout = _simulate(out, args.scale, args.holdout_scale, args.seed)
    wanted = args.models.split(",")
    labels = {v: k for k, v in MODELS.items()}
    results, fm_run = [], None
    curve = [int(s) for s in args.curve_steps.split(",") if s]
    timing_steps = [int(s) for s in args.timing_steps.split(",") if s]
    for config in wanted:
        run = out / config
        teacher = None
        if config.startswith("student"):
            if fm_run is None:
                raise SystemExit("the student needs the flow-matching run: list flow-matching-photons before it")
            teacher = fm_run / "best"
        info = _train(config, train_file, run, args.minutes, args.threads, teacher)
        variants = [(None, labels.get(config, config))]
        if config.startswith("flow-matching"):
            fm_run = run
            variants = [({"steps": s}, f"{labels.get(config, config)}, {s} Euler steps") for s in curve]
        for sampling, label in variants:
            tag = "default" if sampling is None else f"steps{sampling['steps']}"
            ev_dir = run / f"eval-{tag}"
            ev_dir.mkdir(exist_ok=True)
            _log(f"generating + evaluating {label}")
            t0 = time.perf_counter()
            gen_path = _generate(run / "best", holdout, ev_dir, sampling)
            fid = _evaluate(holdout, gen_path, ev_dir)
            _log(f"  {json.dumps(fid)} ({time.perf_counter() - t0:.0f} s)")
            results.append({"label": label, "config": config, **info, "sampling": sampling, "fidelity": fid})
        if not args.no_timing:
            for sampling in ([{"steps": s} for s in timing_steps] if config.startswith("flow-matching") else [None]):
                _log(f"timing {config} {sampling or ''}")
                t = _timing(run / "best", sampling)
                match = [r for r in results if r["config"] == config and r["sampling"] == sampling]
                if match:
                    match[0]["timing"] = t
                else:
                    results.append({"label": f"{labels.get(config, config)}, {sampling['steps']} Euler steps "
                                    "(timing only)", "config": config, **info, "sampling": sampling, "timing": t})
        (out / "results.json").write_text(json.dumps(results, indent=1))
    text = table(results)
    (out / "table.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
