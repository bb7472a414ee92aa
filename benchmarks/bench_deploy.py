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
fp32, in bf16 (the engine's :class:`~caloforge.engine.BF16Sampler`) and in int8 (ONNX Runtime's
dynamic quantisation of the BN-folded graph),
compares each with the reference (E_tot χ²/ndf, classifier AUC), and bf16/int8 with fp32
(:func:`caloforge.engine.physics_check`, the acceptance check of a reduced-precision path).
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
    from caloforge.models import load_config
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


def quantized_onnx(model) -> bytes:
    """The exported graph, batch norm folded, with int8 dense layers (ONNX Runtime dynamic quantisation:
    per-channel symmetric int8 weights, uint8 activations quantised per call, int32 accumulation)."""
    import os
    import tempfile

    from onnxruntime.quantization import QuantType, quantize_dynamic

    from caloforge.engine import _onnx_bytes, fold_batchnorm
    from caloforge.export import _quiet

    graph = _onnx_bytes(fold_batchnorm(model.export_module().eval()), model)
    with tempfile.TemporaryDirectory(prefix="caloforge-int8-") as tmp, _quiet():
        src, dst = os.path.join(tmp, "fp32.onnx"), os.path.join(tmp, "int8.onnx")
        with open(src, "wb") as f:
            f.write(graph)
        quantize_dynamic(src, dst, op_types_to_quantize=["MatMul", "Gemm"], per_channel=True,
                         weight_type=QuantType.QInt8)
        with open(dst, "rb") as f:
            return f.read()


def _lean_module(m, net: torch.nn.Module) -> torch.nn.Module:
    """The photon generator as ONE fp32 graph with batch norm folded and the preprocessing in fp32."""
    import math

    spec = m.condition_encoder.specs[0]
    a = 1.0 / math.log(spec.hi / spec.lo)
    scale = 1.0 / m.config.voxel_scale

    class Lean(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, noise, cond):
            e = cond[:, :1]
            return self.net(torch.cat([noise, (torch.log(e) - math.log(spec.lo)) * a], 1)) * (e * scale)

    return Lean().eval()


def levers(batch: int, rounds: int) -> list[dict]:
    import caloforge.engine as engine
    from caloforge.engine import BF16Sampler, OnnxSampler, _onnx_bytes
    from caloforge.export import example_inputs, max_relative_deviation, onnx_session

    torch.set_num_threads(1)
    m = photon_model()
    module = m.export_module().eval()
    fp32 = OnnxSampler.build(m, threads=1)
    int8 = onnx_session(quantized_onnx(m), 1)
    engine.MAX_SHIFT = float("inf")  # untrained weights: time the bf16 engine whatever its check says
    bf16 = BF16Sampler.build(m, threads=1, check_showers=64) if engine.bf16_supported() else None
    z, c = example_inputs(m, batch, 0)
    zn, cn = z.numpy(), c.numpy()
    nets = {d: folded_mlp(m.generator.net, d) for d in (torch.float32, torch.bfloat16)}
    lean = _lean_module(m, nets[torch.float32])
    lean_sess = onnx_session(_onnx_bytes(lean, m), 1)
    lins = [x for x in nets[torch.float32] if isinstance(x, torch.nn.Linear)]
    acts = ["swish"] * (len(lins) - 1) + ["relu"]
    scale = 1.0 / m.config.voxel_scale
    enc = m.condition_encoder
    block = 2048 if batch > 2048 else batch
    packed = [torch.ops.mkldnn._reorder_linear_weight(x.weight.detach().to(torch.bfloat16), block) for x in lins]
    biases = [x.bias.detach().to(torch.bfloat16) for x in lins]
    gen = torch.Generator().manual_seed(0)

    def eager(z, c):
        with torch.inference_mode():
            return module(z, c)

    def bf16_autocast(z, c):
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            return module(z, c).float()

    def folded_bf16(z, c):
        with torch.inference_mode():
            x = nets[torch.bfloat16](torch.cat([z, enc.encode_matrix(c)], 1).to(torch.bfloat16)).float()
            return x.mul_(c[:, :1] * scale)

    def onednn_bf16(z, c):  # prepacked bf16 weights, dense + Swish/ReLU fused in one oneDNN primitive
        with torch.inference_mode():
            y = torch.cat([z, enc.encode_matrix(c)], 1).to(torch.bfloat16)
            for w, b, act in zip(packed, biases, acts):
                y = torch.ops.mkldnn._linear_pointwise(y, w, b, act, [None], "")
            return y.float().mul_(c[:, :1] * scale)

    def ort_lean(z, c):
        return lean_sess.run(None, {"noise": z, "conditions": c})[0]

    w_np = [x.weight.detach().numpy().T.copy() for x in lins]
    b_np = [x.bias.detach().numpy().copy() for x in lins]

    def numpy_fp32(z, c):  # folded fp32 MLP on numpy's BLAS: the least per-call overhead in Python
        y = np.concatenate([z, (np.log(c[:, :1]) - np.log(enc.specs[0].lo)) / np.log(enc.specs[0].hi / enc.specs[0].lo)], 1)
        for i, (w, b) in enumerate(zip(w_np, b_np)):
            y = y @ w
            y += b
            if i < len(w_np) - 1:
                y *= 1.0 / (1.0 + np.exp(-y))
            else:
                np.maximum(y, 0.0, out=y)
        return y * (c[:, :1] * scale)

    def blocked(fn, blk, zz, cc):
        if len(zz) <= blk:
            return lambda: fn(zz, cc)
        return lambda: [fn(zz[i:i + blk], cc[i:i + blk]) for i in range(0, len(zz), blk)]

    cands = {"eager PyTorch (inference_mode)": (eager, False, None),
             "ONNX Runtime fp32, exported graph (engine fp32)": (lambda z, c: fp32.run(z, c), True, None),
             "ONNX Runtime fp32, BN-folded fp32 graph": (ort_lean, True, 512),
             "numpy fp32, BN-folded (BLAS)": (numpy_fp32, True, 512),
             "bf16 autocast, exported graph": (bf16_autocast, False, 2048),
             "bf16 BN-folded (torch.nn)": (folded_bf16, False, 2048),
             "bf16 oneDNN fused + prepacked": (onednn_bf16, False, 2048)}
    cands["ONNX Runtime int8 (dynamic quantisation), BN-folded"] = (
        lambda z, c: int8.run(None, {"noise": z, "conditions": c})[0], True, 512)
    if bf16 is not None:
        cands["bf16 engine (caloforge.engine.BF16Sampler, blocks of 2048)"] = (lambda z, c: bf16.run(z, c), True, None)
    calls = {name: blocked(fn, blk or batch, *((zn, cn) if np_in else (z, c))) for name, (fn, np_in, blk) in cands.items()}
    # the floors: the four matrix products alone (prepacked oneDNN), and the noise draw
    xs = {d: [torch.randn(min(batch, block), x.in_features).to(d) for x in lins] for d in (torch.float32, torch.bfloat16)}
    pk = {d: [torch.ops.mkldnn._reorder_linear_weight(x.weight.detach().to(d), min(batch, block)) for x in lins]
          for d in (torch.float32, torch.bfloat16)}
    reps_inner = max(1, batch // block)

    def matmuls(d):
        def run():
            with torch.inference_mode():
                for _ in range(reps_inner):
                    for x, w, lin in zip(xs[d], pk[d], lins):
                        torch.ops.mkldnn._linear_pointwise(x, w, None, "none", [None], "")
        return run

    floors = {"floor: 4 matrix products only, fp32 (oneDNN)": matmuls(torch.float32),
              "floor: 4 matrix products only, bf16 (oneDNN)": matmuls(torch.bfloat16),
              "floor: noise draw, torch.randn": lambda: torch.randn(batch, m.noise_dim, generator=gen)}
    if batch == 1:
        gemv_in = [np.ones((1, w.shape[0]), np.float32) for w in w_np]
        gemv_out = [np.empty((1, w.shape[1]), np.float32) for w in w_np]
        floors["floor: 4 fp32 matrix-vector products (numpy BLAS, weights from cache)"] = \
            lambda: [np.matmul(x, w, out=o) for x, w, o in zip(gemv_in, w_np, gemv_out)]
    with torch.inference_mode():
        ref = module(z, c).numpy()

    def value(out):
        out = [np.asarray(x) for x in out] if isinstance(out, list) else [np.asarray(out)]
        return np.concatenate(out)

    dev = {name: max_relative_deviation(ref, value(f())) for name, f in calls.items()}
    calls.update(floors)
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
    flops = 2 * sum(x.in_features * x.out_features for x in lins)
    rows = []
    for name in calls:
        row = {"lever": name, "batch": batch, "cpu_us_min": min(cpu[name]),
               "cpu_us_median": statistics.median(cpu[name]), "wall_us_min": min(wall[name]),
               "wall_us_median": statistics.median(wall[name]), "max_rel_dev_vs_fp32": dev.get(name)}
        if "matri" in name:
            row["gflops_at_min"] = flops / (row["cpu_us_min"] * 1e-6) / 1e9
        rows.append(row)
        print(json.dumps(row), flush=True)
    print("\n| lever | batch | CPU µs/shower, median (min) | max |Δ|/E_shower vs fp32 |\n|---|---|---|---|")
    for r in rows:
        d = "–" if r["max_rel_dev_vs_fp32"] is None else f"{r['max_rel_dev_vs_fp32']:.1e}"
        g = f" ({r['gflops_at_min']:.0f} GFLOP/s)" if "gflops_at_min" in r else ""
        print(f"| {r['lever']}{g} | {batch} | {r['cpu_us_median']:.2f} ({r['cpu_us_min']:.2f}) | {d} |")
    return rows


def fidelity(model_path: str, reference: str, seed: int, max_showers: int,
             precisions: tuple[str, ...] = ("fp32", "bf16", "int8"), classifier: bool = True,
             classifier_epochs: int | None = None) -> dict:
    """fp32, bf16 (autocast) and int8 (the engine's ONNX Runtime graph) on the same noise, each against the
    reference (E_tot χ²/ndf, classifier AUC), and bf16/int8 against fp32 with the engine's physics check.
    ``classifier_epochs``: fewer epochs than the official classifier's 50 (the protocol of ``geometry``;
    the CaloChallenge one on ds1-photons), for a quick run — say so beside the figure."""
    import caloforge.engine as engine
    from caloforge.engine import BF16Sampler, physics_check
    from caloforge.evaluate import compare
    from caloforge.export import onnx_session
    from caloforge.generate import load_model
    from caloforge.io import ShowerData, read_showers

    torch.set_num_threads(1)
    gen = load_model(model_path)
    m = gen.model
    ref = read_showers(reference)
    if len(ref.incident_energy) > max_showers:  # a random subset: the classifier's cost grows with the sample
        keep = np.sort(np.random.default_rng(seed).choice(len(ref.incident_energy), max_showers, replace=False))
        ref = ShowerData(ref.incident_energy[keep], ref.showers[keep])
    energy = ref.incident_energy
    noise = m.sample_noise(len(energy), torch.Generator().manual_seed(seed))
    cond = torch.as_tensor(energy, dtype=torch.float32).reshape(-1, 1)
    module = m.export_module().eval()
    other = m.sample_noise(len(energy), torch.Generator().manual_seed(seed + 1))
    with torch.inference_mode():
        independent = module(other, cond).numpy()  # the physics check's stand-in reference
        samples = {"fp32": module(noise, cond).numpy()}
    out = {"n": len(energy), "model": model_path, "iteration": gen.iteration}
    try:
        bf16 = BF16Sampler.build(m, threads=1)
        out["bf16_engine_check"] = {"passed": True, "max_shift": max(bf16.check.values())}
    except ValueError as exc:  # compare it anyway, saying that the engine would refuse it
        out["bf16_engine_check"] = {"passed": False, "reason": str(exc)}
        engine.MAX_SHIFT, keep = float("inf"), engine.MAX_SHIFT
        bf16 = BF16Sampler.build(m, threads=1)
        engine.MAX_SHIFT = keep
    samples["bf16"] = np.maximum(bf16.run(noise.numpy(), cond.numpy()), 0.0)
    int8 = onnx_session(quantized_onnx(m), 1)
    samples["int8"] = np.maximum(np.concatenate([int8.run(None, {"noise": noise[i:i + 512].numpy(),
                                                                 "conditions": cond[i:i + 512].numpy()})[0]
                                                 for i in range(0, len(energy), 512)]), 0.0)
    for name in ("bf16", "int8"):
        a, b = samples["fp32"].sum(1), samples[name].sum(1)
        rel = np.abs(b - a) / np.maximum(a, 1e-30)
        check = physics_check(independent, samples["fp32"], samples[name], energy, m.geometry)
        out[f"{name} vs fp32 (same noise)"] = {"etot_rel_diff_median": float(np.median(rel)),
                                               "etot_rel_diff_max": float(rel.max()),
                                               "physics_check_max_shift": max(check.values()),
                                               "physics_check_worst": max(check, key=check.get)}
        print(name, json.dumps(out[f"{name} vs fp32 (same noise)"]), flush=True)
    for name, showers in samples.items():
        if name not in precisions:
            continue
        settings = {"epochs": int(classifier_epochs)} if classifier_epochs else None
        r = compare(ref, ShowerData(energy, showers), gen.geometry, classifier=classifier, fpd_kpd=False,
                    per_energy=True, seed=seed, classifier_settings=settings)
        out[f"{name} vs reference"] = {**{k: r.headline.get(k) for k in ("etot_chi2_ndf", "classifier_auc",
                                                                         "auc_low", "auc_high", "protocol")},
                                       "classifier_epochs": classifier_epochs or "official"}
        print(name, "vs reference", json.dumps(out[f"{name} vs reference"]), flush=True)
    print(json.dumps(out))
    return out


def untrained_checkpoint(config: str, output: str) -> None:
    """RUN_DIR/best with freshly initialised weights of a shipped config: timing does not depend on weights."""
    from pathlib import Path

    from caloforge.checkpoint import point_best, write_checkpoint
    from caloforge.models import load_config
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
    fd.add_argument("--max-showers", type=int, default=6000, help="reference showers used (random subset)")
    fd.add_argument("--precisions", default="fp32,bf16,int8", help="samples compared with the reference")
    fd.add_argument("--no-classifier", action="store_true", help="E_tot χ² only (the classifier AUC is the slow part)")
    fd.add_argument("--classifier-epochs", type=int, default=None,
                    help="train the classifier for this many epochs instead of the protocol's (50); label the figure")
    args = ap.parse_args()
    if args.what == "checkpoint":
        untrained_checkpoint(args.config, args.output)
    elif args.what == "levers":
        levers(args.batch, args.rounds)
    else:
        fidelity(args.model, args.reference, args.seed, args.max_showers, tuple(args.precisions.split(",")),
                 not args.no_classifier, args.classifier_epochs)


if __name__ == "__main__":
    main()
