"""CPU speed levers of the CaloShowerGAN photon generator, and bf16 vs fp32 fidelity.

    nice -n 10 .venv/bin/python benchmarks/bench_deploy.py levers --batch 10000
    nice -n 10 .venv/bin/python benchmarks/bench_deploy.py levers --batch 1
    nice -n 10 .venv/bin/python benchmarks/bench_deploy.py fidelity --model RUN/best --reference REF.h5

``levers`` times, side by side in one process on one thread, the ways to run the published
photon generator (``caloshowergan-photons``: 0.26 M parameters, ≈ 0.51 MFLOP per shower;
weights freshly initialised, batch-norm statistics randomised: the cost does not depend on
them): eager PyTorch (no_grad / inference_mode), ONNX Runtime, bf16 autocast, batch-norm
folded into the dense layers (fp32 and bf16 weights, fp32 epilogue), each whole or in
cache-sized blocks.  Candidates run interleaved, round after round, and each is reported
by the thread CPU time (``time.thread_time``) as well as wall time: on a shared machine the
wall time measures the other jobs, the CPU time the work (min and median over rounds).

``fidelity`` generates one shower per reference shower (its energy) from the same noise in
fp32 and in bf16 (autocast on the exported graph) and compares each with the reference
(E_tot χ²/ndf, classifier AUC) and the two with each other.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings

import numpy as np
import torch

warnings.simplefilter("ignore")


def photon_model():
    from caloforge.config import load_config
    from caloforge.models import fit

    cfg = load_config("caloshowergan-photons").model
    torch.manual_seed(0)
    m = fit(cfg, torch.zeros(2, 368), torch.tensor([256.0, 4194304.0], dtype=torch.float64), {}).eval()
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm1d):
            mod.running_mean.normal_(0, 0.3)
            mod.running_var.uniform_(0.5, 2.0)
    return m


def folded_mlp(seq: torch.nn.Sequential, dtype: torch.dtype) -> torch.nn.Sequential:
    """Dense + eval batch norm → one dense layer (weights in ``dtype``)."""
    mods, layers, i = list(seq), [], 0
    while i < len(mods):
        layer = mods[i]
        if isinstance(layer, torch.nn.Linear):
            w, b = layer.weight.detach().clone(), layer.bias.detach().clone()
            if i + 1 < len(mods) and isinstance(mods[i + 1], torch.nn.BatchNorm1d):
                bn = mods[i + 1]
                s = bn.weight / torch.sqrt(bn.running_var + bn.eps)
                w, b = w * s[:, None], (b - bn.running_mean) * s + bn.bias
                i += 1
            lin = torch.nn.Linear(w.shape[1], w.shape[0])
            lin.weight.data, lin.bias.data = w.detach(), b.detach()
            layers.append(lin.to(dtype))
        else:
            layers.append(layer)
        i += 1
    return torch.nn.Sequential(*layers).eval()


def levers(batch: int, rounds: int) -> list[dict]:
    from caloforge.engine import OnnxSampler
    from caloforge.export import example_inputs, max_relative_deviation

    torch.set_num_threads(1)
    m = photon_model()
    module = m.export_module().eval()
    sess = OnnxSampler.build(m, threads=1)
    z, c = example_inputs(m, batch, 0)
    zn, cn = z.numpy(), c.numpy()
    nets = {d: folded_mlp(m.generator.net, d) for d in (torch.float32, torch.bfloat16)}
    scale = 1.0 / m.config.voxel_scale

    def eager(z, c):
        with torch.no_grad():
            return module(z, c)

    def eager_inf(z, c):
        with torch.inference_mode():
            return module(z, c)

    def bf16(z, c):
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            return module(z, c)

    def folded(dtype):
        def run(z, c):
            with torch.inference_mode():
                x = nets[dtype](torch.cat([z, m.condition_encoder.encode_matrix(c)], 1).to(dtype)).float()
                return x.mul_(c[:, :1] * scale).clamp_min_(0)
        return run

    def ort(z, c):
        return sess.session.run(None, {"noise": z, "conditions": c})[0]

    def blocked(fn, block, z, c):
        return lambda: [fn(z[i:i + block], c[i:i + block]) for i in range(0, len(z), block)]

    cands = {"eager no_grad": (eager, False), "eager inference_mode": (eager_inf, False),
             "onnxruntime": (ort, True), "bf16 autocast": (bf16, False),
             "BN-folded fp32": (folded(torch.float32), False), "BN-folded bf16": (folded(torch.bfloat16), False)}
    calls = {}
    for name, (fn, numpy_in) in cands.items():
        zz, cc = (zn, cn) if numpy_in else (z, c)
        calls[name] = (lambda fn=fn, zz=zz, cc=cc: fn(zz, cc))
        if batch > 1000:
            for block in (512, 2048):
                calls[f"{name}, blocks of {block}"] = blocked(fn, block, zz, cc)
    with torch.inference_mode():
        ref = module(z, c).numpy()
    dev = {name: max_relative_deviation(ref, np.concatenate([np.asarray(x) for x in out]) if isinstance(
        out := f(), list) else np.asarray(out)) for name, f in calls.items()}
    reps = max(1, 2000 // batch)
    cpu = {k: [] for k in calls}
    wall = {k: [] for k in calls}
    for f in calls.values():
        f()
    for _ in range(rounds):
        for name, f in calls.items():
            t, tc = time.perf_counter(), time.thread_time()
            for _ in range(reps):
                f()
            cpu[name].append((time.thread_time() - tc) / (reps * batch) * 1e6)
            wall[name].append((time.perf_counter() - t) / (reps * batch) * 1e6)
    rows = []
    for name in calls:
        rows.append({"lever": name, "batch": batch, "cpu_us_min": min(cpu[name]),
                     "cpu_us_median": statistics.median(cpu[name]), "wall_us_min": min(wall[name]),
                     "wall_us_median": statistics.median(wall[name]), "max_rel_dev_vs_fp32": dev[name]})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def fidelity(model_path: str, reference: str, seed: int) -> dict:
    from caloforge.evaluate import compare
    from caloforge.generate import load_model, reference_energies
    from caloforge.io import ShowerData, read_showers

    gen = load_model(model_path)
    m = gen.model
    energy, _, _ = reference_energies(reference)
    noise = m.sample_noise(len(energy), torch.Generator().manual_seed(seed))
    cond = torch.as_tensor(energy, dtype=torch.float32).reshape(-1, 1)
    module = m.export_module().eval()
    with torch.inference_mode():
        fp32 = module(noise, cond).numpy()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = module(noise, cond).float().numpy()
    ref = read_showers(reference)
    out = {"n": len(energy)}
    rel = np.abs(bf16.sum(1) - fp32.sum(1)) / np.maximum(fp32.sum(1), 1e-30)
    out["etot_rel_diff_median"], out["etot_rel_diff_max"] = float(np.median(rel)), float(rel.max())
    for label, a, b in (("fp32 vs reference", ref, ShowerData(energy, fp32)),
                        ("bf16 vs reference", ref, ShowerData(energy, bf16)),
                        ("bf16 vs fp32", ShowerData(energy, fp32), ShowerData(energy, bf16))):
        r = compare(a, b, gen.geometry, classifier=True, fpd_kpd=False, per_energy=True, seed=seed)
        out[label] = {k: r.headline[k] for k in ("etot_chi2_ndf", "classifier_auc")}
        print(label, json.dumps(out[label]), flush=True)
    print(json.dumps(out))
    return out


def untrained_checkpoint(config: str, output: str) -> None:
    """RUN_DIR/best with freshly initialised weights of a shipped config: timing does not depend on weights."""
    from pathlib import Path

    from caloforge.checkpoint import point_best, write_checkpoint
    from caloforge.config import load_config
    from caloforge.geometry import load_geometry
    from caloforge.models import fit

    cfg = load_config(config).model
    n_vox = load_geometry(cfg.geometry).n_voxels
    e = torch.as_tensor(256.0 * 2.0 ** np.arange(15), dtype=torch.float64)
    torch.manual_seed(0)
    model = fit(cfg, torch.zeros(len(e), n_vox), e, {}).eval()
    run = Path(output)
    point_best(run, write_checkpoint(run / "checkpoints" / "iter-0000000", model))
    print(run / "best")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="what", required=True)
    lv = sub.add_parser("levers")
    lv.add_argument("--batch", type=int, default=10_000)
    lv.add_argument("--rounds", type=int, default=9)
    ck = sub.add_parser("checkpoint", help="an untrained checkpoint of a shipped config (for caloforge bench)")
    ck.add_argument("config")
    ck.add_argument("output")
    fd = sub.add_parser("fidelity")
    fd.add_argument("--model", required=True)
    fd.add_argument("--reference", required=True)
    fd.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.what == "checkpoint":
        untrained_checkpoint(args.config, args.output)
    elif args.what == "levers":
        levers(args.batch, args.rounds)
    else:
        fidelity(args.model, args.reference, args.seed)


if __name__ == "__main__":
    main()
