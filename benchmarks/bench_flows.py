"""Flow-based models against the CaloShowerGAN demo config, side by side, at the same CPU budget.

Protocol: simulate one training set of a CaloChallenge preset (``--dataset``:
``ds1-photons`` by default, ``ds1-pions``, ``ds2``) and an independent held-out set (another
seed); every config is trained on that preset's geometry (its ``model.geometry`` is replaced); train every model on the same file for the same budget on the same
number of threads; generate one shower per held-out shower (``--like``); evaluate
each with the full evaluator and the CaloChallenge classifier (``caloforge evaluate
--classifier``); time generation per shower at batch 1, 100 and 10 000 on one thread,
and the flow-matching model at 1, 4, 16 and 64 ODE steps.  The student is distilled
from a trained teacher run (``--teacher``) after it: its total cost is the teacher's plus
its own.

The budget counts CPU seconds of the training process by default (``--budget-clock
cpu``), so models trained at the same time on a shared machine get the same amount of
computation; each invocation writes ``<output>/<config>/results.json`` and the table
collects every run in ``--output``, so models can be trained in parallel processes::

    .venv/bin/python benchmarks/bench_flows.py --minutes 60 --models demo --output runs/flows60 &
    .venv/bin/python benchmarks/bench_flows.py --minutes 60 --models caloflow-photons --output runs/flows60
    .venv/bin/python benchmarks/bench_flows.py --minutes 15 --models student-photons --teacher caloflow-photons \\
        --output runs/flows60
    .venv/bin/python benchmarks/bench_flows.py --table --output runs/flows60

``--sampling CONFIG:KEY=JSON`` adds a row for a generation option of a config beside its
default (e.g. ``caloflow-photons:temperature=0.8``); choose such options on an independent
validation file, not on the held-out file of the table.  A run directory that already holds
``best/`` is evaluated without training (e.g. a model given its envelope by
``benchmarks/refit_envelope.py``).

On Geant4 data (``--engine geant4``, docs/geant4.md): the DS2 detector with electrons log-uniform in
1–100 GeV costs ≈ 0.17 CPU-s per shower (the mean shower is 21.5 GeV at ≈ 7.7 ms per GeV), so
30 000 training + 10 000 held-out showers cost ≈ 1.9 CPU-hours once, before any training::

    .venv/bin/python benchmarks/bench_flows.py --dataset ds2 --engine geant4 --energy-range 1GeV:100GeV \
        --scale 0.3 --holdout-scale 0.1 --sim-workers 2 --minutes 60 --output runs/ds2-geant4

Prints one markdown table (and writes ``table.md`` in ``--output``).
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


def _simulate(out: Path, scale: float, holdout_scale: float, seed: int, dataset: str = "ds1-photons",
              engine: str = "gflash", energy_range: str | None = None, workers: int = 1) -> tuple[Path, Path]:
    """The training and held-out files: the preset's plan (or its particle over ``energy_range``,
    log-uniform, with the preset's count × scale), simulated by ``engine``; the CPU time of each
    simulation goes into ``simulation.json``."""
    import resource

    from caloforge.simulate import EnergySpec, get_preset, write_plan
    from caloforge.simulate.api import make_part

    preset = get_preset(dataset)
    train_file, holdout_file = out / "train.h5", out / "holdout.h5"
    costs = json.loads((out / "simulation.json").read_text()) if (out / "simulation.json").exists() else {}
    for path, sc, sd in ((train_file, scale, seed), (holdout_file, holdout_scale, seed + 1000)):
        if path.exists():
            continue
        parts = preset.parts(None, sc)
        if energy_range:  # e.g. a Geant4 reference set that stops at 100 GeV
            lo, _, hi = energy_range.partition(":")
            n = sum(p.n for p in parts)
            parts = [make_part(preset.default_particle, EnergySpec.parse(f"log:{lo}:{hi}"), n)]
        _log(f"simulating {path.name} ({dataset}, {engine}, {sum(p.n for p in parts)} showers, seed {sd})")
        before = [resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
        t0 = time.perf_counter()
        write_plan(path, preset.geometry, parts, seed=sd, workers=workers, energy_scale=preset.energy_scale,
                   derived=preset.derived, engine=engine)
        after = [resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
        cpu = sum(a.ru_utime + a.ru_stime - b.ru_utime - b.ru_stime for a, b in zip(after, before))
        costs[path.name] = {"engine": engine, "showers": sum(p.n for p in parts), "energy_range": energy_range,
                            "cpu_seconds": round(cpu, 1), "wall_seconds": round(time.perf_counter() - t0, 1)}
        _log(f"  {cpu / 60:.1f} CPU-minutes")
        (out / "simulation.json").write_text(json.dumps(costs, indent=1))
    return train_file, holdout_file


def _train(config: str, train_file: Path, run: Path, minutes: float, threads: int, teacher: Path | None,
           clock: str = "cpu", overrides: dict | None = None, dataset: str = "ds1-photons") -> dict:
    from caloforge.models import load_config
    from caloforge.train import train

    cfg = load_config(config).to_dict()
    if cfg["model"]["geometry"] != dataset:  # e.g. the photon demo GAN on pions: same architecture, other grid
        cfg["model"]["geometry"] = dataset
        if dataset == "ds1-pions":
            cfg["model"]["particle"] = "pion"
    if teacher is not None:
        cfg["model"]["teacher"] = str(teacher)
    for key, value in (overrides or {}).items():  # "model.lr_decay_iterations" → value
        section, name = key.split(".", 1)
        cfg[section][name] = value
    if run.exists() and (run / "best").exists():
        _log(f"{run.name}: already trained, reusing")
    else:
        _log(f"training {config} for {minutes:g} {clock} min on {threads} thread(s)")
        res = train(cfg, train_file, run, max_time=f"{minutes * 60:.0f}s", budget_clock=clock, progress=False,
                    threads=threads)
        _log(f"  {res.message}; best iteration {res.best_iteration}")
    from caloforge.checkpoint import latest_checkpoint

    last = json.loads((latest_checkpoint(run) / "config.json").read_text())
    best = json.loads((run / "best" / "config.json").read_text())
    return {"iterations": last["iteration"], "best_iteration": best["iteration"],
            "parameters": _n_params(run / "best")}


def _n_params(path: Path) -> int:
    from safetensors import safe_open

    with safe_open(str(path / "model.safetensors"), framework="pt") as f:
        # trainable weights only: not the fixed masks and orders, not a weight average's copies
        return int(sum(np.prod(f.get_slice(k).get_shape()) for k in f.keys()
                       if not k.endswith(("mask", "order", "frequencies")) and not k.startswith("average.")))


def _evaluate(holdout: Path, generated: Path, out: Path, classifier: bool = True, epochs: int | None = None,
              dataset: str = "ds1-photons") -> dict:
    from caloforge.evaluate import compare
    from caloforge.evaluate.result import etot_chi2_ndf, json_safe

    if (out / "metrics.json").exists():  # a rerun reuses finished evaluations
        m = json.loads((out / "metrics.json").read_text())
    else:
        settings = {"epochs": epochs} if epochs else None  # the official classifier is 50 epochs in float64
        m = json_safe(compare(holdout, generated, dataset, classifier=classifier, seed=0,
                              classifier_settings=settings).metrics)
        (out / "metrics.json").write_text(json.dumps(m))
    clf = m.get("classifier") or {}
    layers = [v["inclusive"]["chi2_ndf"] for k, v in m["features"].items()
              if k.startswith("E_layer_") and v.get("inclusive") and v["inclusive"]["chi2_ndf"] is not None]
    return {"auc_low": (clf.get("low") or {}).get("auc"), "auc_high": (clf.get("high") or {}).get("auc"),
            "fpd_x1e3": (m.get("fpd") or {}).get("value", math.nan) * 1e3,
            "kpd_x1e3": (m.get("kpd") or {}).get("value", math.nan) * 1e3,
            "etot_chi2_ndf": etot_chi2_ndf(m),
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
    lo, hi = gen.e_min, gen.e_max
    row = {}
    for batch, n in TIMING_SHOWERS.items():
        e = np.exp(rng.uniform(np.log(lo), np.log(hi), n))  # log-uniform over the model's range
        generate(gen, e[: min(n, 2 * batch, 1000)], batch_size=batch, sampling=sampling)  # warm-up
        t0 = time.perf_counter()
        generate(gen, e, batch_size=batch, sampling=sampling)
        row[f"ms_b{batch}"] = (time.perf_counter() - t0) / n * 1e3
    return row


def _fmt(v, spec: str) -> str:
    return "–" if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, spec)


def table(results: list[dict], dataset: str = "ds1-photons") -> str:
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
                if row["dataset"].replace("_", "-") == dataset:
                    lines.append(f"| CaloChallenge {row['model']} | | | {row['auc_low_level']} | "
                                 f"{row['auc_high_level']} | {row['fpd_x1e3']} | {row['kpd_x1e3']} | | | "
                                 f"{row.get('ms_per_shower_cpu_b1', '')} | {row.get('ms_per_shower_cpu_b100', '')} | "
                                 f"{row.get('ms_per_shower_cpu_b10000', '')} |")
    return "\n".join(lines)


def _collect(out: Path) -> list[dict]:
    """Every model's rows, in the order of MODELS (each run writes its own results.json)."""
    order = list(MODELS.values())
    found = sorted(out.glob("*/results.json"),
                   key=lambda p: (order.index(p.parent.name) if p.parent.name in order else len(order), p.parent.name))
    return [row for path in found for row in json.loads(path.read_text())]


def _assignments(items: list[str]) -> list[tuple[str, str, str]]:
    """["CONFIG:KEY=JSON", …] (``--set``, ``--sampling``) → [(config, key, JSON text), …]."""
    out = []
    for item in items:
        config, _, assignment = item.partition(":")
        key, _, value = assignment.partition("=")
        out.append((config, key, value))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=60.0, help="training budget per model")
    ap.add_argument("--budget-clock", default="cpu", choices=("cpu", "wall"),
                    help="cpu: the budget counts the training process's CPU seconds (fair on a shared machine)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--dataset", default="ds1-photons", choices=("ds1-photons", "ds1-pions", "ds2"),
                    help="the simulator preset trained and evaluated on (every config gets its geometry)")
    ap.add_argument("--engine", default="gflash", choices=("gflash", "geant4"),
                    help="the reference: the parametrised simulator or Geant4 (docs/geant4.md)")
    ap.add_argument("--energy-range", default=None, metavar="LOW:HIGH",
                    help="log-uniform incident energies instead of the preset's (e.g. 1GeV:100GeV for Geant4 DS2)")
    ap.add_argument("--sim-workers", type=int, default=1, help="processes simulating the two files")
    ap.add_argument("--scale", type=float, default=1.0, help="training set: fraction of the preset")
    ap.add_argument("--holdout-scale", type=float, default=0.2, help="held-out set: fraction of the preset")
    ap.add_argument("--models", default=",".join(MODELS.values()), help="comma-separated shipped configs")
    ap.add_argument("--teacher", default="flow-matching-photons",
                    help="the run (a config name in --output) the student distils")
    ap.add_argument("--set", action="append", default=[], metavar="CONFIG:SECTION.KEY=JSON",
                    help="override a config value, e.g. caloflow-photons:model.lr_decay_iterations=20000")
    ap.add_argument("--sampling", action="append", default=[], metavar="CONFIG:KEY=JSON",
                    help="also evaluate CONFIG generated with this sampling option, beside its default "
                         "(repeatable; e.g. caloflow-photons:temperature=0.8)")
    ap.add_argument("--curve-steps", default="1,4,16,64", help="ODE steps evaluated for the flow-matching model")
    ap.add_argument("--classifier-steps", default="16",
                    help="ODE steps whose flow-matching sample also gets the (costly) classifier AUCs")
    ap.add_argument("--classifier-epochs", type=int, default=None,
                    help="train the CaloChallenge classifier for fewer than its 50 epochs (float64, 2×2048: "
                         "~20 CPU-min per sample at 50)")
    ap.add_argument("--timing-steps", default="1,4,16,64", help="ODE steps timed for the flow-matching model")
    ap.add_argument("--no-timing", action="store_true")
    ap.add_argument("--table", action="store_true", help="only print the table of the runs already in --output")
    ap.add_argument("--output", default="runs/bench-flows")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    if args.table:
        text = table(_collect(out), args.dataset)
        (out / "table.md").write_text(text + "\n")
        print(text)
        return
    train_file, holdout = _simulate(out, args.scale, args.holdout_scale, args.seed, args.dataset, args.engine,
                                    args.energy_range, args.sim_workers)
    overrides: dict[str, dict] = {}
    for config, key, value in _assignments(args.set):
        overrides.setdefault(config, {})[key] = json.loads(value)
    labels = {v: k for k, v in MODELS.items()}
    curve = [int(s) for s in args.curve_steps.split(",") if s]
    timing_steps = [int(s) for s in args.timing_steps.split(",") if s]
    for config in args.models.split(","):
        run = out / config
        teacher = None
        if config.startswith("student"):
            teacher = out / args.teacher / "best"
            if not teacher.exists():
                raise SystemExit(f"the student needs the teacher run {teacher}: train {args.teacher} first")
        info = _train(config, train_file, run, args.minutes, args.threads, teacher, args.budget_clock,
                      overrides.get(config), args.dataset)
        label = labels.get(config, config)
        if config.startswith("student"):
            label = f"student (of {args.teacher})"
        extra = [({key: json.loads(value)}, f"{label}, {key} {value}")
                 for name, key, value in _assignments(args.sampling) if name == config]
        variants = [(None, label)] + extra
        if config.startswith("flow-matching"):  # the step curve, then any other option at the default steps
            variants = [({"steps": s}, f"{label}, {s} Euler steps") for s in curve] + extra
        results = []
        for sampling, name in variants:
            tag = "default" if sampling is None else "".join(f"{k}{v}" for k, v in sampling.items())
            ev_dir = run / f"eval-{tag}"
            ev_dir.mkdir(exist_ok=True)
            _log(f"generating + evaluating {name}")
            t0 = time.perf_counter()
            gen_path = _generate(run / "best", holdout, ev_dir, sampling)
            with_classifier = sampling is None or "steps" not in sampling or (
                str(sampling["steps"]) in args.classifier_steps.split(","))
            fid = _evaluate(holdout, gen_path, ev_dir, with_classifier, args.classifier_epochs, args.dataset)
            _log(f"  {json.dumps(fid)} ({time.perf_counter() - t0:.0f} s)")
            results.append({"label": name, "config": config, **info, "budget": f"{args.minutes:g} "
                            f"{args.budget_clock}-min, {args.threads} thread(s)", "sampling": sampling,
                            "fidelity": fid})
        if not args.no_timing:
            for sampling in ([{"steps": s} for s in timing_steps] if config.startswith("flow-matching") else [None]):
                _log(f"timing {config} {sampling or ''}")
                t = _timing(run / "best", sampling)
                match = [r for r in results if r["sampling"] == sampling]
                if match:
                    match[0]["timing"] = t
                else:
                    results.append({"label": f"{label}, {sampling['steps']} Euler steps (timing only)",
                                    "config": config, **info, "sampling": sampling, "timing": t})
        (run / "results.json").write_text(json.dumps(results, indent=1))
    text = table(_collect(out), args.dataset)
    (out / "table.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
