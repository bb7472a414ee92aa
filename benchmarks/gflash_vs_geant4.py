"""How far the parametrised simulator (gflash) is from Geant4, geometry by geometry.

    PYTHONPATH=. python benchmarks/gflash_vs_geant4.py --out /tmp/g4ref --tag after
    PYTHONPATH=. python benchmarks/gflash_vs_geant4.py --out /tmp/g4ref --tag before  # on the older commit

For every geometry the same plan (seed 0: the same incident energies, angles and impact
points, row by row) is simulated with ``--engine geant4`` and ``--engine gflash``
through the CLI, then ``caloforge evaluate --reference G4 --generated GFLASH --classifier``
compares them.  Geant4 files are made once and kept (they do not depend on gflash);
the gflash file and the evaluation are named by ``--tag``.  The plan: the geometry's
default particle (electrons for ds2/ds3/clic, photons otherwise), log-uniform 1–50 GeV,
perpendicular incidence, the dataset's energy convention.  CPU seconds are the
user+system time of the command's whole process tree (workers and Geant4 applications).

Outputs under ``--out``: ``<geometry>/{geant4,gflash-<tag>}.h5``, ``eval-<tag>/``,
``summary-<tag>.json`` and ``summary-<tag>.md`` (one row per geometry).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

GEOMETRIES = {"ds2": "electron", "calogan": "photon", "clic": "electron", "ild": "photon",
              "atlas-4layer": "photon", "ds1-photons": "photon", "ds3": "electron"}
DEFAULT = ["ds2", "calogan", "clic", "ild", "atlas-4layer", "ds1-photons"]
ENERGY_RANGE = "1GeV:50GeV"  # log-uniform: ⟨E⟩ ≈ 12.5 GeV, ≈ 0.1 s of Geant4 CPU per shower
MACHINE = "2-core AMD EPYC, 24 GiB (shared)"
CLI = [sys.executable, "-m", "caloforge"]


def _tree_cpu(root: int, seen: dict[int, float]) -> None:
    """Record the CPU seconds (user + system) of ``root`` and every descendant now alive:
    the Geant4 applications are grandchildren that ``getrusage`` never sees (not waited for)."""
    tick = os.sysconf("SC_CLK_TCK")
    parent: dict[int, int] = {}
    cpu: dict[int, float] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as fh:
                f = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parent[int(d)] = int(f[1])
        cpu[int(d)] = (int(f[11]) + int(f[12])) / tick
    tree, frontier = {root}, [root]
    while frontier:
        p = frontier.pop()
        kids = [c for c, pp in parent.items() if pp == p and c not in tree]
        tree.update(kids)
        frontier.extend(kids)
    for pid in tree:
        if pid in cpu:
            seen[pid] = max(seen.get(pid, 0.0), cpu[pid])


def run(cmd: list[str], log: Path) -> dict:
    """Run a CLI command; its wall time, its CPU time (the whole process tree, sampled every
    0.25 s: a process's last quarter second may be missed) and the command line."""
    seen: dict[int, float] = {}
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT)
        while proc.poll() is None:
            _tree_cpu(proc.pid, seen)
            time.sleep(0.25)
    if proc.returncode:
        raise subprocess.CalledProcessError(proc.returncode, cmd)
    shown = " ".join(["caloforge", *cmd[len(CLI):]])
    return {"command": shown, "cpu_s": round(sum(seen.values()), 1), "wall_s": round(time.perf_counter() - t0, 1),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def simulate(geo: str, engine: str, path: Path, n: int, seed: int, workers: int) -> dict:
    meta = path.with_suffix(".json")
    if path.exists() and meta.exists():
        return json.loads(meta.read_text())
    cmd = [*CLI, "simulate", "--engine", "geant4" if engine == "geant4" else "gflash", "-g", geo,
           "-p", GEOMETRIES[geo], "--energy-range", ENERGY_RANGE, "--log", "--theta", "90", "-n", str(n),
           "--seed", str(seed), "-j", str(workers), "-q", "-o", str(path)]
    info = run(cmd, path.with_suffix(".log"))
    meta.write_text(json.dumps(info, indent=1))
    return info


def shower_stats(path: Path, geo_name: str) -> dict:
    """Per-file means: hit voxels, longitudinal centre of gravity [layer index, energy-weighted],
    radial width (energy-weighted RMS distance of the voxels from the shower axis [mm])."""
    from caloforge.geometry import load_geometry
    from caloforge.io import read_showers

    geo = load_geometry(geo_name)
    data = read_showers(path)
    x = np.asarray(data.showers, dtype=np.float64)
    e = x.sum(1)
    ok = e > 0
    layer = geo.voxel_layer.astype(float)
    cog = (x * layer).sum(1)[ok] / e[ok]
    c = geo.voxel_centers
    if "r" in c:
        r2 = np.asarray(c["r"], float) ** 2
    else:
        r2 = np.asarray(c["x"], float) ** 2 + np.asarray(c["y"], float) ** 2
    width = np.sqrt((x * r2).sum(1)[ok] / e[ok])
    return {"n": int(len(e)), "hits": float((x > 0).sum(1).mean()), "cog_layer": float(cog.mean()),
            "cog_layer_sd": float(cog.std()), "radial_rms_mm": float(width.mean()),
            "e_ratio": float((e / data.incident_energy).mean())}


def _find(d, *keys, default=None):
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return default
        d = d[k]
    return d


def evaluate(geo: str, ref: Path, gen: Path, out: Path, epochs: int) -> tuple[dict, dict]:
    meta = out.with_suffix(".json")
    if meta.exists() and (out / "metrics.json").exists() and meta.stat().st_mtime > gen.stat().st_mtime:
        return json.loads((out / "metrics.json").read_text()), json.loads(meta.read_text())
    info = run([*CLI, "evaluate", "--reference", str(ref), "--generated", str(gen), "--geometry", geo,
                "--classifier", "--no-plots", "--no-per-energy", "--protocol", "caloforge",
                "--cls-epochs", str(epochs), "-o", str(out)], out.with_suffix(".log"))
    meta.write_text(json.dumps(info, indent=1))
    return json.loads((out / "metrics.json").read_text()), info


def summarise(geo: str, metrics: dict, g4: dict, gf: dict) -> dict:
    head = metrics["headline"]
    feats = metrics.get("features", {})
    layer_chi2 = [_find(v, "inclusive", "chi2_ndf") for k, v in feats.items() if k.startswith("E_layer_")]
    layer_chi2 = [v for v in layer_chi2 if v is not None and np.isfinite(v)]
    return {
        "geometry": geo,
        "auc_low": head.get("auc_low"), "auc_high": head.get("auc_high"),
        "fpd_x1e3": head.get("fpd_x1e3"), "kpd_x1e3": head.get("kpd_x1e3"),
        "etot_chi2_ndf": head.get("etot_chi2_ndf"),
        "layer_chi2_ndf_mean": float(np.mean(layer_chi2)) if layer_chi2 else None,
        "hit_ratio": gf["hits"] / g4["hits"], "hits_g4": g4["hits"],
        "cog_g4": g4["cog_layer"], "cog_gflash": gf["cog_layer"],
        "radial_rms_g4": g4["radial_rms_mm"], "radial_rms_gflash": gf["radial_rms_mm"],
        "e_ratio_g4": g4["e_ratio"], "e_ratio_gflash": gf["e_ratio"],
    }


def fmt(v, nd=3) -> str:
    return "–" if v is None else (f"{v:.{nd}g}" if isinstance(v, (float, int)) else str(v))


def markdown(rows: list[dict], tag: str, header: str) -> str:
    cols = ["geometry", "auc_low", "auc_high", "fpd_x1e3", "kpd_x1e3", "etot_chi2_ndf", "layer_chi2_ndf_mean", "hit_ratio",
            "cog_g4", "cog_gflash", "radial_rms_g4", "radial_rms_gflash", "g4_cpu_s", "eval_cpu_s"]
    lines = [header, "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(fmt(r.get(c)) for c in cols) + " |")
    return "\n".join(lines) + "\n"


def compare(out: Path, tags: list[str]) -> str:
    """One table, each geometry's rows for every tag (from the summary files of the default plan)."""
    runs = {t: {r["geometry"]: r for r in json.loads((out / f"summary-{t}.json").read_text())} for t in tags}
    cols = [("AUC low", "auc_low", 3), ("AUC high", "auc_high", 3), ("FPD×10³", "fpd_x1e3", 4),
            ("KPD×10³", "kpd_x1e3", 3), ("E_tot χ²/ndf", "etot_chi2_ndf", 3), ("layer E χ²/ndf", "layer_chi2_ndf_mean", 3),
            ("hits gflash/G4", "hit_ratio", 3), ("CoG G4", "cog_g4", 3), ("CoG gflash", "cog_gflash", 3),
            ("r_rms G4 [mm]", "radial_rms_g4", 3), ("r_rms gflash [mm]", "radial_rms_gflash", 3),
            ("G4 CPU [s]", "g4_cpu_s", 4), ("evaluate CPU [s]", "eval_cpu_s", 3)]
    lines = ["| geometry | gflash | " + " | ".join(c[0] for c in cols) + " |", "|" + "---|" * (len(cols) + 2)]
    for geo in runs[tags[0]]:
        for t in tags:
            r = runs[t].get(geo)
            if r:
                lines.append(f"| {geo} | {t} | " + " | ".join(fmt(r.get(k), nd) for _, k, nd in cols) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("g4ref"))
    ap.add_argument("--tag", default="current", help="names the gflash files and the evaluation")
    ap.add_argument("--geometries", default=",".join(DEFAULT))
    ap.add_argument("-n", type=int, default=1000, help="showers per engine and geometry")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=20, help="classifier epochs")
    ap.add_argument("--only-simulate", action="store_true", help="make the files, no evaluation")
    ap.add_argument("--engines", default="geant4,gflash")
    ap.add_argument("--compare", help="TAG1,TAG2: print one table of existing summaries, run nothing")
    args = ap.parse_args()
    if args.compare:
        text = compare(args.out, args.compare.split(","))
        (args.out / f"summary-{args.compare.replace(',', '-vs-')}.md").write_text(text)
        print(text)
        return
    os.environ.setdefault("OMP_NUM_THREADS", str(args.workers))
    rows = []
    for geo in args.geometries.split(","):
        d = args.out / geo
        d.mkdir(parents=True, exist_ok=True)
        suffix = "" if (args.n, args.seed) == (1000, 0) else f"-n{args.n}-s{args.seed}"
        g4_path, gf_path = d / f"geant4{suffix}.h5", d / f"gflash-{args.tag}{suffix}.h5"
        engines = args.engines.split(",")
        g4_info = simulate(geo, "geant4", g4_path, args.n, args.seed, args.workers) if "geant4" in engines else None
        gf_info = simulate(geo, "gflash", gf_path, args.n, args.seed, args.workers) if "gflash" in engines else None
        print(f"{geo}: geant4 {g4_info}, gflash {gf_info}", flush=True)
        if args.only_simulate:
            continue
        metrics, ev_info = evaluate(geo, g4_path, gf_path, d / f"eval-{args.tag}{suffix}", args.epochs)
        row = summarise(geo, metrics, shower_stats(g4_path, geo), shower_stats(gf_path, geo))
        row.update(g4_cpu_s=g4_info["cpu_s"], gflash_cpu_s=gf_info["cpu_s"], eval_cpu_s=ev_info["cpu_s"],
                   g4_command=g4_info["command"], gflash_command=gf_info["command"], eval_command=ev_info["command"],
                   date=ev_info["date"], machine=MACHINE)
        rows.append(row)
        print(json.dumps(row), flush=True)
    if rows:
        header = (f"gflash ({args.tag}) vs Geant4: {args.n} showers per engine, {ENERGY_RANGE} log-uniform, "
                  f"θ = 90°, seed {args.seed}; {time.strftime('%Y-%m-%d', time.gmtime())}, {MACHINE}, "
                  f"python {platform.python_version()}")
        (args.out / f"summary-{args.tag}{suffix}.json").write_text(json.dumps(rows, indent=1))
        (args.out / f"summary-{args.tag}{suffix}.md").write_text(markdown(rows, args.tag, header))
        print(markdown(rows, args.tag, header))


if __name__ == "__main__":
    main()
