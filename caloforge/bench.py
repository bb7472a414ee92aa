"""Generation speed with the CaloChallenge timing protocol, for every deployment path of a model.

The protocol of the CaloChallenge 2022 comparison (``ms_per_shower_{cpu,gpu}_b{1,100,10000}``):
milliseconds per shower when showers are generated in calls of batch size 1, 100 and
10 000, on the CPU with a stated number of threads (and on a GPU when there is one).
Here each timing

* draws the noise and runs the sampling network for one call of ``batch`` showers at
  one incident energy (the conditions are given, as a simulation framework gives them);
* is repeated ``calls = max(1, 1000 // batch)`` times per repeat (≥ 1000 showers, or one
  call of 10 000), after 2 warm-up calls that are not timed;
* is the **median over repeats** of (repeat time / showers in the repeat).

Paths: ``pytorch`` (the exported graph, :meth:`ShowerModel.export_module`, eager under
``torch.inference_mode``), ``generate`` (what ``caloforge generate`` runs, conversion to
numpy included), ``onnxruntime`` (the ONNX export, one CPU session, large calls in blocks of
512 showers as :mod:`caloforge.engine` runs them), ``bf16`` (the engine's bf16 dense layers,
timed only when they pass their physics-level check; opt-in), ``cpp`` (the
LibTorch example of ``examples/cpp`` on the TorchScript export, timed inside the C++
program with the same protocol) and ``cuda`` (the ``pytorch`` path on the GPU, when present).

>>> median_ms([3.0, 1.0, 2.0])
2.0
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import torch

from caloforge.errors import ConfigError, DataError

__all__ = ["BATCHES", "PATHS", "WARMUP_CALLS", "median_ms", "calls_per_repeat", "time_calls", "bench",
           "calochallenge_rows", "format_table", "machine_description", "find_cpp_program"]

BATCHES = (1, 100, 10_000)
PATHS = ("pytorch", "generate", "onnxruntime", "cpp")
OPTIONAL_PATHS = ("bf16", "cuda")  # timed only when asked for (--paths)
WARMUP_CALLS = 2
SHOWERS_PER_REPEAT = 1000
# the published table, shipped with the package (docs/leaderboard.md names its source)
ANCHORS = Path(__file__).resolve().parent / "data" / "calochallenge_2022_final_results.csv"
DATASETS = {"ds1-photons": "ds1_photons", "ds1-pions": "ds1_pions", "ds2": "ds2", "ds3": "ds3"}


def median_ms(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def calls_per_repeat(batch: int, showers: int = SHOWERS_PER_REPEAT) -> int:
    """Calls per timed repeat: ≥ ``showers`` showers, or one call when the batch is larger."""
    return max(1, int(showers) // int(batch))


def time_calls(call: Callable[[], Any], batch: int, repeats: int, sync: Callable[[], None] = lambda: None,
               calls: int | None = None) -> dict:
    """The protocol for one path and batch size: warm-up, then the median ms/shower over ``repeats``."""
    for _ in range(WARMUP_CALLS):
        call()
    sync()
    calls = calls_per_repeat(batch) if calls is None else int(calls)
    per_shower, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(calls):
            call()
        sync()
        per_shower.append((time.perf_counter() - t0) * 1e3 / (calls * batch))
        cpu.append((time.process_time() - c0) * 1e3 / (calls * batch))
    # wall time is the protocol; the process CPU time tells the work apart from waiting on a shared machine
    return {"batch": int(batch), "ms_per_shower": median_ms(per_shower), "min_ms_per_shower": min(per_shower),
            "max_ms_per_shower": max(per_shower), "cpu_ms_per_shower": median_ms(cpu), "repeats": int(repeats),
            "calls_per_repeat": calls}


def find_cpp_program(explicit: str | Path | None = None) -> Path | None:
    """The built C++ example: ``explicit``, or build/cpp or build/cpp-test under the working directory/repo."""
    if explicit is not None:
        p = Path(explicit)
        if not (p.is_file() and os.access(p, os.X_OK)):
            raise ConfigError(f"--cpp-program {p}: no such executable")
        return p
    repo = Path(__file__).resolve().parents[1]
    for base in (Path.cwd(), repo):
        for sub in ("build/cpp", "build/cpp-test"):
            p = base / sub / "caloforge_generate"
            if p.is_file() and os.access(p, os.X_OK):
                return p
    return None


def machine_description(threads: int) -> dict[str, Any]:
    """CPU model, cores, threads used, GPU (if any), library versions: the 'stated' part of the protocol."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    from caloforge.runtime import usable_cpus

    out = {"cpu": cpu, "usable_cpus": usable_cpus(), "threads": int(threads), "torch": torch.__version__,
           "python": platform.python_version(), "gpu": None, "load_average": None}
    try:
        import onnxruntime

        out["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    if hasattr(os, "getloadavg"):
        out["load_average"] = [round(x, 2) for x in os.getloadavg()]
    if torch.cuda.is_available():
        out["gpu"] = torch.cuda.get_device_name(0)
    return out


def calochallenge_rows(geometry: str, anchors: str | Path = ANCHORS) -> list[dict[str, Any]]:
    """The CaloChallenge 2022 rows with timings for the dataset of ``geometry`` (empty when unknown)."""
    import csv

    dataset = DATASETS.get(geometry)
    path = Path(anchors)
    if dataset is None or not path.is_file():
        return []
    rows = []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            if row["dataset"] != dataset or not row.get("ms_per_shower_cpu_b1"):
                continue
            rows.append({"model": row["model"], **{k: float(v) for k, v in row.items()
                                                   if k.startswith("ms_per_shower") and v}})
    return rows


def _cpp_timings(program: Path, model, batches: Sequence[int], threads: int, repeats: int, energy: float,
                 conditions: Sequence[float]) -> list[dict]:
    from caloforge.export import export_model

    with tempfile.TemporaryDirectory(prefix="caloforge-bench-") as tmp:
        path = export_model(model, "torchscript", Path(tmp) / "model.pt").path
        extra = [f"--condition={n}={v}" for n, v in zip(model.condition_names[1:], conditions[1:])]
        done = subprocess.run([str(program), str(path), "--bench", ",".join(map(str, batches)), "--threads",
                               str(threads), "--repeats", str(repeats), "--energy", repr(energy), *extra],
                              capture_output=True, text=True, timeout=3600)
    if done.returncode != 0:
        raise DataError(f"{program}: the C++ benchmark failed ({done.stderr.strip().splitlines()[-1:]})")
    return json.loads(done.stdout)


def bench(model, *, paths: Iterable[str] = PATHS, batches: Sequence[int] = BATCHES, threads: int = 1,
          repeats: int = 5, energy: float | None = None, cpp_program: str | Path | None = None,
          seed: int = 0, showers_per_repeat: int = SHOWERS_PER_REPEAT,
          sampling: Mapping[str, Any] | None = None,
          log: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """Time every path of ``model`` (a checkpoint/run directory or a ShowerGenerator); JSON-able result.

    ``sampling`` sets the family's generation options first (``{"steps": 4}``: the ODE steps a
    flow-matching model is timed at; :meth:`~caloforge.models.base.ShowerModel.set_sampling`), for
    every path: the exported graphs are traced with them."""
    from caloforge.export import example_inputs, export_model, onnx_session
    from caloforge.generate import ShowerGenerator, generate, load_model

    paths = list(paths)
    unknown = [p for p in paths if p not in PATHS + OPTIONAL_PATHS]
    if unknown:
        raise ConfigError(f"--paths: {unknown[0]!r} is not one of {', '.join(PATHS + OPTIONAL_PATHS)}")
    if not batches or any(int(b) < 1 for b in batches):
        raise ConfigError("--batches must be positive batch sizes, e.g. 1,100,10000")
    if threads < 1 or repeats < 1:
        raise ConfigError("--threads and --repeats must be ≥ 1")
    gen = model if isinstance(model, ShowerGenerator) else load_model(model)
    net = gen.model.to("cpu").eval()
    if sampling:  # unknown options or values are a ConfigError
        net.set_sampling(**dict(sampling))
    if energy is None:
        energy = float(np.sqrt(gen.e_min * gen.e_max))
    _, cond_example = example_inputs(net, 1, seed)
    conditions = [float(energy)] + [float(x) for x in cond_example[0, 1:]]
    previous = torch.get_num_threads()
    torch.set_num_threads(int(threads))
    results: list[dict[str, Any]] = []
    rng = torch.Generator().manual_seed(int(seed))
    try:
        module = net.export_module().eval()
        if "cpp" in paths:
            program = find_cpp_program(cpp_program)
            if program is None:
                log("cpp: examples/cpp is not built (cmake -S examples/cpp -B build/cpp "
                    "-DCMAKE_PREFIX_PATH=$(python -c 'import torch;print(torch.utils.cmake_prefix_path)') && "
                    "cmake --build build/cpp); skipped")
            else:
                for row in _cpp_timings(program, net, batches, threads, repeats, float(energy), conditions):
                    results.append({"path": "cpp", "device": "cpu", "threads": threads, **row})
                    log(f"cpp b{row['batch']}: {row['ms_per_shower']:.4g} ms/shower")
        samplers: dict[str, Any] = {}
        deployed, checks = None, {}
        if "onnxruntime" in paths:
            from caloforge.engine import OnnxSampler

            tmp = tempfile.mkdtemp(prefix="caloforge-bench-")
            try:
                onnx_path = export_model(net, "onnx", Path(tmp) / "model.onnx").path
                import onnx

                deployed = sum(int(np.prod(t.dims)) for t in onnx.load(str(onnx_path)).graph.initializer)
                samplers["onnxruntime"] = OnnxSampler(net, onnx_session(onnx_path, threads), threads)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        if "bf16" in paths:
            from caloforge.engine import BF16Sampler

            try:
                samplers["bf16"] = BF16Sampler.build(net, threads)
                checks["bf16"] = samplers["bf16"].check
                log(f"bf16: physics check passed (largest shift {max(checks['bf16'].values()):.2g} statistical errors)")
            except Exception as exc:  # no bf16 on this CPU, no dense layers, or a failed check
                checks["bf16"] = {"failed": str(exc).splitlines()[0] if str(exc) else type(exc).__name__}
                log(f"bf16: not timed ({checks['bf16']['failed']})")
        for batch in map(int, batches):
            cond = torch.tensor([conditions], dtype=torch.float32).expand(batch, -1).contiguous()
            calls: dict[str, Callable[[], Any]] = {}

            def pytorch(cond=cond, batch=batch, dev=torch.device("cpu")):
                with torch.inference_mode():
                    return module(net.sample_noise(batch, rng, dev), cond)

            if "pytorch" in paths:
                calls["pytorch"] = pytorch
            for name, sampler in samplers.items():
                calls[name] = lambda c_np=cond.numpy(), batch=batch, sampler=sampler: sampler.run(
                    net.sample_noise(batch, rng).numpy(), c_np)
            if "generate" in paths:
                e = np.full(batch * calls_per_repeat(batch, showers_per_repeat), float(energy))
                extra = {n: np.full(len(e), v) for n, v in zip(net.condition_names[1:], conditions[1:])}
                # one "call" of generate() does calls_per_repeat batches; time_calls divides accordingly
                calls["generate"] = lambda e=e, extra=extra, batch=batch: generate(
                    gen, e, conditions=extra, batch_size=batch, seed=seed)
            for name, call in calls.items():
                n_calls = calls_per_repeat(batch, showers_per_repeat)
                if name == "generate":  # one generate() call makes all n_calls batches
                    row = time_calls(call, batch * n_calls, repeats, calls=1)
                    row.update(batch=batch, calls_per_repeat=n_calls)
                else:
                    row = time_calls(call, batch, repeats, calls=n_calls)
                results.append({"path": name, "device": "cpu", "threads": threads, **row})
                log(f"{name} b{batch}: {row['ms_per_shower']:.4g} ms/shower")
        if "cuda" in paths or ("pytorch" in paths and torch.cuda.is_available()):
            if not torch.cuda.is_available():
                log("cuda: no CUDA GPU on this machine; skipped")
            else:
                gpu = net.to("cuda")
                gmod = gpu.export_module().eval()
                grng = torch.Generator(device="cuda").manual_seed(int(seed))
                for batch in map(int, batches):
                    cond = torch.tensor([conditions], dtype=torch.float32, device="cuda").expand(batch, -1)

                    def on_gpu(cond=cond, batch=batch):
                        with torch.inference_mode():
                            return gmod(gpu.sample_noise(batch, grng, torch.device("cuda")), cond)

                    row = time_calls(on_gpu, batch, repeats, sync=torch.cuda.synchronize,
                                     calls=calls_per_repeat(batch, showers_per_repeat))
                    results.append({"path": "pytorch", "device": "cuda", "threads": threads, **row})
                net.to("cpu")
    finally:
        torch.set_num_threads(previous)
    return {"date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "command": " ".join(["caloforge"] + sys.argv[1:]) if Path(sys.argv[0]).name == "caloforge" else "",
            "machine": machine_description(threads), "model": {
                "path": str(gen.path), "family": gen.config.get("name"), "geometry": gen.geometry,
                "n_voxels": gen.n_voxels, "parameters": int(sum(p.numel() for p in net.parameters())),
                "deployed_parameters": deployed,
                "conditions": dict(zip(net.condition_names, conditions)),
                "sampling": dict(net.sampling_options)},  # the defaults updated by --sampling
            "protocol": {"batches": [int(b) for b in batches], "repeats": repeats, "warmup_calls": WARMUP_CALLS,
                         "showers_per_repeat": f"max(batch, {showers_per_repeat})", "statistic": "median",
                         "timed": "noise draw + sampling network (conditions given)"},
            "results": results, "checks": checks, "calochallenge": calochallenge_rows(gen.geometry)}


def format_table(report: dict[str, Any]) -> list[list[str]]:
    """Rows [source, path, device/threads, ms b1, b100, b10000] of caloforge's timings and the anchors.

    caloforge's CPU cells are "wall (process CPU)" ms per shower; the published GPU rows
    are listed only when this report has GPU timings.
    """
    batches = report["protocol"]["batches"]
    rows = []
    keyed: dict[tuple, dict[int, str]] = {}
    for r in report["results"]:
        cell = f"{r['ms_per_shower']:.4g}"
        if r.get("cpu_ms_per_shower") is not None and r["device"] == "cpu":
            cell += f" ({r['cpu_ms_per_shower']:.3g})"
        keyed.setdefault((r["path"], r["device"], r["threads"]), {})[r["batch"]] = cell
    for (path, device, threads), by_batch in keyed.items():
        rows.append([f"caloforge {report['model']['family']}", path,
                     f"{device}, {threads} thread{'s' if threads > 1 else ''}" if device == "cpu" else device]
                    + [by_batch.get(b, "–") for b in batches])
    devices = ("cpu", "gpu") if any(r["device"] == "cuda" for r in report["results"]) else ("cpu",)
    for a in report["calochallenge"]:
        for device in devices:
            vals = [a.get(f"ms_per_shower_{device}_b{b}") for b in batches]
            if any(v is not None for v in vals):
                rows.append([f"CaloChallenge {a['model']}", "published", device]
                            + [f"{v:.4g}" if v is not None else "–" for v in vals])
    return rows
