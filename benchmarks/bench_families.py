"""`caloforge bench` (CaloChallenge timing protocol) for every shipped model family, one CPU thread.

    # the whole table of docs/benchmarks-log.md ("caloforge bench for every family")
    nice -n 10 .venv/bin/python benchmarks/bench_families.py --out bench-families
    # some families only
    nice -n 10 .venv/bin/python benchmarks/bench_families.py --out bench-families --only calogan,student

For each family the shipped CPU config is *trained for a few iterations* on a small simulated
sample of its geometry (``caloforge.train.train`` with ``max_iterations``; the timing does
not depend on how well a model is trained, but a real ``best/`` runs the real pipeline: fitted
preprocessing, BIB-AE's KDE latent and post-processor, the student's teacher), then
:func:`caloforge.bench.bench` times the ``pytorch``, ``generate``, ``onnxruntime`` and ``cpp``
paths (the last when ``examples/cpp`` is built in ``build/cpp``).  Per family the table gives
the batches and repeats used: the protocol's batch 1, 100 and 10 000 wherever 10 000 showers
fit in memory and in a few minutes of one core; otherwise the largest batch that does and
fewer showers per repeat (stated in the output).  Reports go to ``OUT/FAMILY.json``; a
markdown table, with the matching CaloChallenge 2022 rows, is printed and written to
``OUT/table.md``.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch


@dataclass
class Case:
    family: str
    config: str
    data: str                          # simulated sample: preset name (or calogan / atlas-gan helpers)
    scale: float                       # fraction of the preset
    iterations: int = 4
    batches: tuple[int, ...] = (1, 100, 10_000)
    repeats: int = 5
    showers_per_repeat: int = 1000
    paths: tuple[str, ...] = ("pytorch", "generate", "onnxruntime", "cpp")
    overrides: dict = field(default_factory=dict)
    note: str = ""


NO_CPP = ("cpp not timed here: the C++ program times ≥ 1000 showers per repeat at every batch, "
          "hours of this shared core for this model")

CASES = [
    Case("caloshowergan", "caloshowergan-photons", "ds1-photons", 0.01),
    Case("energy_split", "caloshowergan-photons-split3", "ds1-photons", 0.01),
    Case("calogan", "calogan-cpu", "calogan", 0.01, batches=(1, 100, 1000), repeats=3, showers_per_repeat=200,
         note="batch 10 000 not run: the dense per-layer activations need > 5 GB at that batch (see the "
              "CaloGAN speed table) on a shared 23 GB machine"),
    Case("atlas_gan", "atlas-gan-cpu", "atlas-gan", 0.01),
    Case("flow_matching", "flow-matching-photons", "ds1-photons", 0.01, batches=(1, 100, 1000), repeats=3,
         showers_per_repeat=10, paths=("pytorch", "onnxruntime"),
         note="16 Euler steps (the config's `steps: 16`, `solver: euler`); batch 1000 is the largest run "
              "(time, not memory: batch 10 000 costs what 10 × batch 1000 does); 10 calls per batch-1 repeat; "
              + NO_CPP),
    Case("student", "student-photons", "ds1-photons", 0.01, repeats=3, showers_per_repeat=200,
         paths=("pytorch", "generate", "onnxruntime", "bf16", "cpp"), overrides={"model": {"pool_size": 1024}},
         note="teacher: the flow_matching run above; pool_size 1024 (training only, no effect on timing)"),
    Case("gan3d", "gan3d-clic-cpu", "clic-perpendicular", 0.01, batches=(1, 100), repeats=3,
         showers_per_repeat=5, paths=("pytorch", "onnxruntime"),
         note="CLIC 25×25×25 (15 625 cells); batch 100 is the largest run (batch 10 000: 2.5 GB per activation "
              "and ~1.5 CPU-minutes per call); 5 calls per batch-1 repeat; " + NO_CPP),
    Case("caloflow", "caloflow-photons", "ds1-photons", 0.01, batches=(1, 100, 1000), repeats=3,
         showers_per_repeat=5, paths=("pytorch", "onnxruntime"),
         note="batch 1000 is the largest run (time: ≈ 0.25–0.5 s per shower at batch 1 on this starved core); "
              "5 calls per batch-1 repeat; " + NO_CPP),
    Case("bibae", "bibae-ild-angled-cpu", "ild-angled", 0.004, iterations=2, batches=(1, 10), repeats=3,
         showers_per_repeat=3, paths=("pytorch", "onnxruntime"),
         overrides={"model": {"stages": [1, 1]}},
         note="ILD 30×60×30 = 54 000 cells, KDE latent + post-processor on (stages [1, 1]); batch 10 is the "
              "largest run (time: ≈ 50 ms of CPU per shower, a few % of a core here; batch 10 000 would also need "
              "> 20 GB of activations); 3 calls per batch-1 repeat; " + NO_CPP),
    # the paper-size 3DGAN grid (51×51×25 = 65 025 cells, ≈ 0.4 s per shower on one core): opt-in (--only)
    Case("gan3d-paper", "gan3d-clic-angled", "clic-angled", 0.002, iterations=2, batches=(1, 100), repeats=3,
         showers_per_repeat=10, paths=("pytorch", "onnxruntime", "cpp"),
         note="paper size, 51×51×25 = 65 025 cells; batch 100 is the largest run"),
]


def _log(msg: str) -> None:
    print(time.strftime("%H:%M:%S"), msg, flush=True)


def _data(out: Path, preset: str, scale: float) -> Path:
    """A small simulated training sample of ``preset`` (cached)."""
    path = out / "data" / f"{preset}-{scale:g}.h5"
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    _log(f"simulating {preset} × {scale:g}")
    if preset == "atlas-gan":
        from caloforge.io import write_showers
        from caloforge.simulate.paper_data import simulate_atlas_gan

        d = simulate_atlas_gan(scale=scale, workers=1)
        write_showers(path, d.incident_energy, d.showers, d.conditions)
    elif preset == "calogan":
        from caloforge.io import write_showers
        from caloforge.simulate.paper_data import simulate_calogan

        d = simulate_calogan("positron", scale=scale, workers=1)
        write_showers(path, d.incident_energy, d.showers, d.conditions)
    else:
        from caloforge.simulate import simulate_preset_to_file

        simulate_preset_to_file(path, preset, seed=0, scale=scale, workers=1)
    return path


def _merge(base: dict, extra: dict) -> dict:
    for k, v in extra.items():
        base[k] = _merge(base.get(k, {}), v) if isinstance(v, dict) else v
    return base


def _trained(out: Path, case: Case, teacher: Path | None) -> Path:
    """RUN/best of ``case.config`` after ``case.iterations`` training iterations (cached)."""
    from caloforge.models import load_config
    from caloforge.train import train

    run = out / "runs" / case.config
    if (run / "best").exists():
        return run / "best"
    cfg = load_config(case.config).to_dict()
    _merge(cfg, case.overrides)
    if case.family == "student":
        if teacher is None:
            raise SystemExit("student needs the flow_matching case first (its teacher)")
        cfg["model"]["teacher"] = str(teacher)
    n = case.iterations
    cfg["training"].update(max_iterations=n, checkpoint_every=n, tensorboard=False,
                           score_max_showers=min(200, cfg["training"].get("score_max_showers", 200)))
    data = _data(out, case.data, case.scale)
    _log(f"training {case.config} for {n} iterations")
    train(cfg, data, run, progress=False, threads=1)
    return run / "best"


def markdown(report: dict, case: Case, anchors_shown: set | None = None) -> str:
    """The report as a markdown table; the published rows of a dataset only the first time (``anchors_shown``)."""
    from caloforge.bench import format_table

    m = report["model"]
    batches = report["protocol"]["batches"]
    lines = [f"`{case.config}` ({m['family']}, {m['geometry']}, {m['n_voxels']:,} voxels, "
             f"{m['deployed_parameters'] or m['parameters']:,} deployed parameters), {report['date']}, "
             f"load average {report['machine']['load_average'][0]}, {report['protocol']['repeats']} repeats"
             + (f"; {case.note}" if case.note else "") + ":", "",
             "| path | " + " | ".join(f"batch {b:,}".replace(",", " ") for b in batches) + " |",
             "|---|" + "---|" * len(batches)]
    geometry = m["geometry"]
    repeated = anchors_shown is not None and geometry in anchors_shown
    for row in format_table(report):
        if repeated and row[1] == "published":
            continue
        lines.append(f"| {row[0].replace('caloforge ' + str(m['family']), 'caloforge')} {row[1]}"
                     f"{' (' + row[2] + ')' if row[1] == 'published' else ''} | " + " | ".join(row[3:]) + " |")
    if repeated:
        lines.append(f"| CaloChallenge 2022, {geometry} | published | (the rows under the first {geometry} table) | |")
    elif anchors_shown is not None:
        anchors_shown.add(geometry)
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="bench-families", help="work directory (data, runs, JSON reports)")
    ap.add_argument("--only", default="", help="comma-separated families or configs (default: all)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--cpp-program", default=None, help="built examples/cpp program (default: build/cpp)")
    ap.add_argument("--table-only", action="store_true", help="print the markdown table of the JSON reports in OUT")
    args = ap.parse_args()
    from caloforge.bench import bench

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    only = {s.strip() for s in args.only.split(",") if s.strip()}
    teacher = out / "runs" / "flow-matching-photons" / "best"
    tables, shown = [], set()
    for case in CASES:
        if (only and case.family not in only and case.config not in only) or (not only and case.family == "gan3d-paper"):
            continue
        if args.table_only:
            if (out / f"{case.config}.json").exists():
                tables.append(markdown(json.loads((out / f"{case.config}.json").read_text()), case, shown))
                print(tables[-1])
            continue
        best = _trained(out, case, teacher if teacher.exists() else None)
        _log(f"bench {case.config}: batches {case.batches}, repeats {case.repeats}")
        report = bench(best, paths=case.paths, batches=case.batches, threads=args.threads, repeats=case.repeats,
                       cpp_program=args.cpp_program, showers_per_repeat=case.showers_per_repeat, log=_log)
        report["command"] = f"benchmarks/bench_families.py --only {case.config}"
        report["note"] = case.note
        (out / f"{case.config}.json").write_text(json.dumps(report, indent=1))
        tables.append(markdown(report, case, shown))
        print(tables[-1], flush=True)
    if not args.table_only:
        (out / "table.md").write_text("\n".join(tables))


if __name__ == "__main__":
    main()
