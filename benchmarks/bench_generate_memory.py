"""Peak memory of ``caloforge generate`` on a granular grid: the memory-aware default block vs a fixed one.

    # the docs' figure: a tiny MLP (CaloShowerGAN, hidden 32) on ild-angled, 10 000 showers,
    # default block vs the old fixed --batch-size 10000 (≈ 5 GB: needs the free memory)
    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/bench_generate_memory.py
    # a 3D-convolutional family, default block only (10 000 at once would need ≈ 20 GB)
    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/bench_generate_memory.py --family gan3d \
        --geometry clic-angled --widths 1 --batch-sizes default

Each run is ``caloforge generate -e 50GeV -n N --theta 60:120 --threads 1`` in a fresh child
process, which reports its own peak resident memory (``ru_maxrss``): the figure is what the
command needs, imports and model included.  The model (``--family``) is a CaloShowerGAN MLP
with hidden width ``--widths``, or the ``gan3d-clic-cpu`` config with every channel count set
to ``--widths``, on ``--geometry``, trained for one iteration on 32 random showers: memory
depends on the shapes, not on the weights.  ``--uncompressed`` (default) writes the output without gzip, which costs CPU but no
memory.  ``--batch-size 10000`` is the fixed default generation had before the memory-aware one.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def make_model(out: Path, family: str, geometry: str, widths: int) -> Path:
    """A one-iteration checkpoint of ``family`` on ``geometry`` (reused when present)."""
    from caloforge.geometry import load_geometry
    from caloforge.io import ShowerData
    from caloforge.train import load_config, train

    best = out / f"run-{family}-{geometry}-{widths}" / "best"
    if best.exists():
        return best
    if family == "gan3d":
        model = {**load_config("gan3d-clic-cpu").to_dict()["model"], "geometry": geometry, "seed_channels": widths,
                 "generator_channels": [widths, widths], "discriminator_channels": [widths, widths]}
    else:
        model = {"name": "caloshowergan", "geometry": geometry, "latent_dim": 8, "generator_hidden": [widths],
                 "critic_hidden": [widths], "critic_steps": 1,
                 "conditions": {"incident_energy": "log", "incident_theta": "cos"}}
    n_vox = load_geometry(geometry).n_voxels
    rng = np.random.default_rng(0)
    e = rng.uniform(1e4, 1e5, 32)
    showers = rng.exponential(1.0, (32, n_vox)).astype(np.float32) * (rng.random((32, n_vox)) < 0.1)
    cfg = {"model": model, "training": {"batch_size": 8, "max_iterations": 1, "checkpoint_every": 1,
                                        "tensorboard": False, "validation_fraction": 0.25, "score_max_showers": 8}}
    train(cfg, ShowerData(e, showers, {"incident_theta": rng.uniform(1.1, 2.0, 32)}), best.parent, progress=False)
    return best


def child(argv: list[str], uncompressed: bool) -> None:
    """``caloforge generate argv`` in this process (optionally without gzip)."""
    if uncompressed:
        from caloforge.io import ShowerWriter

        d = list(ShowerWriter.__init__.__defaults__)
        d[-2] = None  # (conditions, dtype, compression, attrs): compression off
        ShowerWriter.__init__.__defaults__ = tuple(d)
    from caloforge.cli import app

    app(argv, standalone_mode=False)


def measure(model: Path, output: Path, n: int, batch_size: int | None, uncompressed: bool) -> dict:
    argv = ["generate", "-m", str(model), "-o", str(output), "-e", "50GeV", "-n", str(n), "--theta", "60:120",
            "--threads", "1", "--engine", "pytorch"]
    if batch_size is not None:
        argv += ["--batch-size", str(batch_size)]
    output.unlink(missing_ok=True)
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, __file__, "child", "--uncompressed" if uncompressed else "--gzip",
                             "--argv-json", json.dumps(argv)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate()
    if proc.returncode:
        raise SystemExit(f"generate failed: {err[-2000:]}")
    stats = json.loads(out.strip().splitlines()[-1])
    import h5py

    with h5py.File(output, "r") as f:
        block = int(f.attrs["batch_size"])
        rows = f["showers"].shape[0]
    output.unlink()
    return {"batch_size": "default" if batch_size is None else batch_size, "block": block, "rows": rows,
            "wall_s": time.perf_counter() - t0, **stats}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="what")
    c = sub.add_parser("child")
    c.add_argument("--argv-json")
    c.add_argument("--uncompressed", action="store_true")
    c.add_argument("--gzip", action="store_true")
    ap.add_argument("--family", choices=["caloshowergan", "gan3d"], default="caloshowergan")
    ap.add_argument("--geometry", default="ild-angled")
    ap.add_argument("--widths", type=int, default=32)
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--batch-sizes", nargs="+", default=["default", "10000"])
    ap.add_argument("--gzip", dest="uncompressed", action="store_false")
    ap.add_argument("--output", default="runs/bench_generate_memory")
    args = ap.parse_args()
    if args.what == "child":
        import resource

        t0 = time.process_time()
        child(json.loads(args.argv_json), args.uncompressed)
        print(json.dumps({"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                          "cpu_s": time.process_time() - t0}))
        return
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    model = make_model(out, args.family, args.geometry, args.widths)
    rows = []
    for b in args.batch_sizes:
        row = measure(model, out / "gen.h5", args.n, None if b == "default" else int(b), args.uncompressed)
        row.update(family=args.family, geometry=args.geometry, widths=args.widths, n=args.n)
        rows.append(row)
        print(f"{args.family} {args.geometry} n={args.n} --batch-size {row['batch_size']}: block {row['block']}, "
              f"peak RSS {row['peak_rss_mib']:.0f} MiB, {row['cpu_s']:.0f} CPU-s, {row['wall_s']:.0f} s wall", flush=True)
    (out / "generate_memory.json").write_text(json.dumps({"date": stamp, "result": rows}, indent=1))
    print(f"written {out / 'generate_memory.json'} ({stamp})")


if __name__ == "__main__":
    main()
