"""The ``caloforge`` command line: a thin layer over the Python API.

Every command turns a :class:`caloforge.errors.CaloforgeError` into one red line on
stderr and exit code 2, with no traceback.
"""

from __future__ import annotations

import functools
import math
import sys
from pathlib import Path
from typing import Callable, Optional

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from caloforge.errors import CaloforgeError

app = typer.Typer(
    name="caloforge",
    help="Generative fast calorimeter simulation: geometries, shower files, reference simulation, "
    "generative models, training, generation and physics validation.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console(highlight=False, soft_wrap=True)  # log lines stay whole in files and pipes
err_console = Console(stderr=True, highlight=False)


def fail(message: str, code: int = 2) -> None:
    """Print one red line to stderr and exit with ``code``."""
    err_console.print(f"[bold red]error:[/] {message}", soft_wrap=True, markup=True)
    raise typer.Exit(code)


def user_errors(fn: Callable) -> Callable:
    """Decorator: CaloforgeError → one-line message + exit 2; Ctrl-C → exit 130."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except CaloforgeError as exc:
            fail(str(exc).replace("\n", " "))
        except KeyboardInterrupt:
            fail("interrupted", code=130)

    return wrapper


def format_energy(mev: float) -> str:
    """1000.0 → '1 GeV', 256.0 → '256 MeV'."""
    if not math.isfinite(mev):
        return str(mev)
    for unit, scale in (("TeV", 1e6), ("GeV", 1e3)):
        if abs(mev) >= scale:
            return f"{mev / scale:.4g} {unit}"
    return f"{mev:.4g} MeV"


# ----------------------------------------------------------------------------------
@app.command("geometry")
@user_errors
def geometry_cmd(
    spec: str = typer.Argument(..., help="Preset name (ds1-photons, ds1-pions, ds2, ds3, calogan, atlas-4layer, "
                               "clic, ild), a CaloChallenge binning .xml or a geometry .yaml."),
) -> None:
    """Print a geometry's layer table; the last line is `voxels: N`."""
    from caloforge.geometry import load_geometry

    geo = load_geometry(spec)
    table = Table(title=f"{geo.name}: {geo.description}" if geo.description else geo.name, box=box.SIMPLE_HEAD,
                  pad_edge=False)
    for col in ("id", "name", "readout", "voxels", "z₀ [mm]", "Δz [mm]", "X0", "λ_I", "material", "f_samp"):
        table.add_column(col, justify="left" if col in ("name", "readout", "material") else "right", no_wrap=True)
    for row in geo.describe():
        table.add_row(
            str(row["id"]), row["name"], f"{row['binning']}, {row['extent']}" if row["voxels"] else "-",
            str(row["voxels"]), f"{row['z_front']:.1f}", f"{row['thickness']:.1f}", f"{row['X0']:.2f}",
            f"{row['lambda_I']:.2f}", row["material"] if row["thickness"] else "-",
            f"{row['sampling_fraction']:.3g}" if row["thickness"] else "-",
        )
    # piped output has no terminal width; keep the table readable in logs
    (console if console.is_terminal else Console(highlight=False, width=120)).print(table)
    total_x0 = sum(r["X0"] for r in geo.describe())
    console.print(f"layers: {geo.n_layers} ({len(geo.active_layers)} read out), depth {total_x0:.1f} X0"
                  + (f" + {geo.upstream_X0:g} X0 upstream" if geo.upstream_X0 else ""))
    print(f"voxels: {geo.n_voxels}")


@app.command("info")
@user_errors
def info_cmd(
    file: Path = typer.Argument(..., help="Shower file (CaloChallenge or CaloGAN HDF5)."),
    geometry: Optional[str] = typer.Option(None, "--geometry", "-g", help="Check the file against this geometry."),
) -> None:
    """Summarise a shower file: counts, energies, response, sparsity, geometry match."""
    from caloforge.io import summarize

    s = summarize(file, geometry)
    console.print(f"[bold]{s.path}[/]  ({s.format} format)")
    console.print(f"showers: {s.n_showers}")
    console.print(f"voxels per shower: {s.n_voxels}")
    console.print(f"incident energy: {format_energy(s.energy_min)} … {format_energy(s.energy_max)}")
    if s.distinct_energies is not None:
        console.print(f"distinct energies ({len(s.distinct_energies)}): "
                      + ", ".join(format_energy(e) for e in s.distinct_energies))
    else:
        console.print("distinct energies: continuous spectrum")
    if s.conditions:
        console.print("extra conditions: " + ", ".join(s.conditions))
    console.print(f"mean E_tot / E_inc: {s.mean_response:.4f}")
    console.print(f"sparsity (fraction of empty voxels): {s.sparsity:.4f}")
    if s.geometry is not None:
        colour = "green" if s.geometry_match else "red"
        console.print(f"geometry: [{colour}]{s.geometry_message}[/]")
        if not s.geometry_match:
            raise typer.Exit(2)


# --- simulate (caloforge.simulate) -------------------------------------------------
@app.command("simulate")
@user_errors
def simulate_cmd(
    output: Path = typer.Option(..., "--output", "-o", help="Output shower file (.h5, CaloChallenge format)."),
    geometry: Optional[str] = typer.Option(None, "--geometry", "-g",
                                           help="Geometry preset, .xml or .yaml (default: the preset's)."),
    particle: Optional[str] = typer.Option(None, "--particle", "-p",
                                           help="photon | electron | pion (default: the preset's)."),
    energies: Optional[str] = typer.Option(None, "--energies",
                                           help="Discrete energies, e.g. 1GeV,10GeV,100GeV (--n showers each)."),
    energy_range: Optional[str] = typer.Option(None, "--energy-range",
                                               help="Energy range LOW:HIGH, e.g. 1GeV:100GeV (--n showers in all)."),
    log: bool = typer.Option(False, "--log", help="Log-uniform instead of uniform in --energy-range."),
    theta: Optional[str] = typer.Option(None, "--theta",
                                        help="Polar angle in degrees (90 = perpendicular), or a range, e.g. 30:90."),
    phi: Optional[str] = typer.Option(None, "--phi", help="Azimuth of the tilt in degrees, or a range LOW:HIGH."),
    n: Optional[int] = typer.Option(None, "--n", "-n", help="Number of showers (per energy for --energies)."),
    preset: Optional[str] = typer.Option(None, "--preset",
                                         help="Dataset preset: ds1-photons, ds1-pions, calogan, clic, ild, atlas-4layer."),
    scale: float = typer.Option(1.0, "--scale", help="With --preset: multiply the preset's counts."),
    seed: int = typer.Option(0, "--seed", help="Random seed (same seed → identical file)."),
    workers: int = typer.Option(0, "--workers", "-j", help="Worker processes (0 = all cores)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Simulate reference showers (parametrised GFlash EM + hadronic model) into a CaloChallenge file."""
    from caloforge.errors import ConfigError
    from caloforge.simulate import EnergySpec, get_preset, parse_angle, parse_range, write_plan
    from caloforge.simulate.api import make_part

    def angle(text: Optional[str]):
        if text is None:
            return None
        if ":" in text:
            return parse_range(text, parse_angle)
        return parse_angle(text)

    def azimuth(text: Optional[str]):
        if text is None:
            return None
        conv = lambda s: math.radians(float(s))  # noqa: E731
        try:
            return tuple(conv(s) for s in text.split(":")) if ":" in text else conv(text)
        except ValueError:
            raise ConfigError(f"bad --phi {text!r}: expected degrees or LOW:HIGH") from None

    if preset is not None:
        if energies or energy_range or n is not None or theta or phi:
            raise ConfigError("--preset fixes energies, counts and angles: drop --energies/--energy-range/--n/--theta/--phi")
        p = get_preset(preset)
        parts = p.parts(particle, scale)
        geo = geometry or p.geometry
        attrs = {"preset": preset}
    else:
        if particle is None or geometry is None:
            raise ConfigError("--geometry and --particle are required (or use --preset)")
        if (energies is None) == (energy_range is None):
            raise ConfigError("give exactly one of --energies and --energy-range (or --preset)")
        if n is None or n <= 0:
            raise ConfigError("--n must be a positive number of showers")
        spec = EnergySpec.parse(energies, log=False) if energies else EnergySpec.parse(energy_range, log=log)
        if energy_range and spec.kind == "discrete":
            raise ConfigError(f"--energy-range needs LOW:HIGH, got {energy_range!r}")
        parts = [make_part(particle, spec, n, theta=angle(theta), phi=azimuth(phi))]
        geo, attrs = geometry, {}
    count = write_plan(output, geo, parts, seed=seed, workers=workers or None, progress=not quiet, attrs=attrs)
    console.print(f"wrote {count} showers to {output}")


# --- evaluate (caloforge.evaluate) -------------------------------------------------
@app.command("evaluate")
@user_errors
def evaluate_cmd(
    reference: Path = typer.Option(..., "--reference", help="Reference shower file (e.g. Geant4 or the "
                                   "reference simulator), CaloChallenge or CaloGAN HDF5."),
    generated: Path = typer.Option(..., "--generated", help="Generated shower file to validate."),
    geometry: str = typer.Option(..., "--geometry", help="Geometry of both files (preset name, .xml or .yaml)."),
    output: Path = typer.Option(..., "--output", "-o", help="Directory for metrics.json, the PNG plots and "
                                "report.html (created if missing)."),
    classifier: bool = typer.Option(False, "--classifier/--no-classifier", help="Also train the CaloChallenge "
                                    "DNN classifier on voxels and on high-level features (AUC; slower)."),
    per_energy: bool = typer.Option(True, "--per-energy/--no-per-energy", help="Compare every feature at each "
                                    "incident-energy point as well as inclusively."),
    seed: int = typer.Option(0, "--seed", help="Seed for subsampling, FPD/KPD and the classifier."),
    max_showers: Optional[int] = typer.Option(None, "--max-showers", min=1, help="Use only the first N rows "
                                              "of each file (mind files sorted by energy)."),
    device: str = typer.Option("cpu", "--device", help="Torch device for the classifier: cpu, cuda "
                                "or auto."),
    plots: bool = typer.Option(True, "--plots/--no-plots", help="Write the PNG plots (metrics.json and "
                               "report.html are always written)."),
    training: Optional[Path] = typer.Option(None, "--training", help="The model's training file: adds the "
                                            "nearest-neighbour memorisation check (the reference must be "
                                            "independent of it)."),
) -> None:
    """Validate generated showers against a reference: per-feature separation power and χ²/ndf
    (inclusive and per incident energy), E_tot χ², FPD/KPD, optional classifier AUC, plots and an
    offline HTML report.  Files are streamed, so DS3-sized files fit in memory."""
    from caloforge.evaluate import compare
    from caloforge.evaluate.report import format_headline, write_report
    from caloforge.geometry import load_geometry

    geo = load_geometry(geometry)
    if output.exists() and not output.is_dir():  # before minutes of work, not after
        fail(f"{output}: exists and is not a directory; choose another output directory")
    result = compare(reference, generated, geo, per_energy=per_energy, classifier=classifier, seed=seed,
                     device=device, progress=True, max_showers=max_showers, training=training)
    with console.status("writing plots and report"):
        html_path = write_report(result, output, plots=plots)
    m = result.metrics
    worst = m["summary"]["worst_chi2_ndf"]
    line = f"[bold]{m['n_generated']}[/] generated vs [bold]{m['n_reference']}[/] reference showers on {geo.name}"
    if worst is not None:
        line += f"; worst feature: {m['summary']['worst_feature']} (χ²/ndf {worst:.3g})"
    console.print(line)
    for note in m.get("notes") or []:
        console.print(f"[yellow]note:[/] {note}")
    console.print(format_headline(result.headline))
    console.print(f"metrics: {Path(output) / 'metrics.json'}")
    print(f"report: {html_path}")


# --- train / generate (caloforge.train, caloforge.generate) -----------------------
def _launch_data_parallel(nproc: int) -> None:
    """Re-run this ``caloforge train`` command as ``nproc`` processes under torch's elastic launcher."""
    import os

    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    argv, skip = [], False
    for arg in sys.argv[1:]:  # the same command without --nproc
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            argv.append(arg)
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=f"caloforge-{os.getpid()}",
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0, monitor_interval=0.5)
    try:
        elastic_launch(config, entrypoint=sys.executable)("-m", "caloforge", *argv)
    except ChildFailedError as exc:
        rank, failure = min(exc.failures.items())
        code = failure.exitcode
        why = f"signal {-code}" if code is not None and code < 0 else f"exit code {code}"
        fail(f"training process {rank} of {nproc} failed ({why}); the other processes were stopped", code=1)


@app.command("train")
@user_errors
def train_cmd(
    config: str = typer.Option(..., "--config", "-c", help="Training config YAML, or a shipped config name: "
                               "caloshowergan-photons, caloshowergan-pions, caloshowergan-photons-split2, "
                               "caloshowergan-photons-split3, demo."),
    data: Path = typer.Option(..., "--data", "-d", help="Training shower file (CaloChallenge HDF5)."),
    output: Path = typer.Option(..., "--output", "-o", help="Run directory: checkpoints, best, scores.csv, log.csv, tensorboard/."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in OUTPUT from its newest checkpoint."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda, cuda:N or auto."),
    max_time: Optional[str] = typer.Option(None, "--max-time", help="Time budget for this call, e.g. 90s, 10m, 2h."),
    max_iterations: Optional[int] = typer.Option(None, "--max-iterations", help="Stop after N iterations in total."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Override training.seed of the config."),
    threads: int = typer.Option(0, "--threads", help="Torch threads per process (0 = the CPUs this process may "
                                "use, divided among --nproc processes)."),
    nproc: int = typer.Option(1, "--nproc", help="Data-parallel processes on this machine (launches torchrun's "
                              "elastic agent; gloo on CPU, NCCL on GPU)."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress (a bar on a terminal, "
                                  "a line every 30 s otherwise)."),
) -> None:
    """Train a model of any family; checkpoints are scored by the E_tot χ² on held-out showers."""
    import os

    from caloforge.config import load_config
    from caloforge.runtime import usable_cpus
    from caloforge.train import train

    if nproc < 1:
        raise CaloforgeError(f"--nproc must be ≥ 1, got {nproc}")
    if nproc > 1:
        cfg = load_config(config)  # one error line here rather than one per process
        if cfg.training.batch_size % nproc:
            raise CaloforgeError(f"training.batch_size {cfg.training.batch_size} must be divisible by --nproc {nproc}")
        if not data.is_file():
            raise CaloforgeError(f"{data}: no such file")
        _launch_data_parallel(nproc)
        return
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if not threads and world > 1:
        threads = max(1, usable_cpus() // int(os.environ.get("LOCAL_WORLD_SIZE", world)))
    # train() checks the config, --seed, --max-time and --max-iterations before it reads the data
    result = train(config, data, output, resume=resume, device=device, max_time=max_time,
                   max_iterations=max_iterations, progress=progress, seed=seed, threads=threads or None)
    if int(os.environ.get("RANK", "0")) != 0:
        return
    if result.best_iteration is not None:
        console.print(f"best checkpoint: iteration {result.best_iteration}, score {result.best_score:.4g}")
    if result.stopped == "diverged":
        fail(result.message, code=1)
    console.print(f"{result.message}; run directory {result.run_dir}")
    if result.best_checkpoint is not None:
        print(f"best: {result.best_checkpoint}")


def _angles(text: Optional[str], n: int, rng, polar: bool, option: str):
    """Degrees (a value or LOW:HIGH, uniform) → n angles in rad."""
    import numpy as np

    from caloforge.errors import ConfigError
    from caloforge.simulate.units import parse_angle, parse_range

    def azimuth(v: str) -> float:
        try:
            return float(np.deg2rad(float(v.strip().lower().removesuffix("deg"))))
        except ValueError:
            raise ConfigError(f"bad {option} {text!r}: expected degrees or LOW:HIGH") from None

    parse = parse_angle if polar else azimuth
    if ":" in text:
        lo, hi = parse_range(text, parse)
        return rng.uniform(lo, hi, n)
    return np.full(n, parse(text))


@app.command("generate")
@user_errors
def generate_cmd(
    model: Path = typer.Option(..., "--model", "-m", help="Checkpoint directory (e.g. RUN_DIR/best) or run directory."),
    output: Path = typer.Option(..., "--output", "-o", help="Output shower file (CaloChallenge HDF5)."),
    energies: Optional[str] = typer.Option(None, "--energies", "-e", help="Comma-separated incident energies, "
                                           "e.g. 1GeV,65GeV (bare numbers are MeV)."),
    n: Optional[int] = typer.Option(None, "--n", "-n", help="Showers per energy given with --energies."),
    like: Optional[Path] = typer.Option(None, "--like", help="Reference file: generate one shower per reference "
                                        "shower, with its incident energy and conditions (angles, impact point)."),
    theta: Optional[str] = typer.Option(None, "--theta", help="With --energies: polar angle in degrees, or a "
                                        "range LOW:HIGH drawn uniformly, for models conditioned on incident_theta."),
    phi: Optional[str] = typer.Option(None, "--phi", help="With --energies: azimuth in degrees, or LOW:HIGH."),
    batch_size: int = typer.Option(10_000, "--batch-size", help="Showers per forward pass."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda, cuda:N or auto."),
    threads: int = typer.Option(0, "--threads", help="Torch threads (0 = the CPUs this process may use)."),
    seed: int = typer.Option(0, "--seed", help="Random seed."),
    sampling: Optional[list[str]] = typer.Option(None, "--sampling", help="Generation option KEY=VALUE of the "
                                                 "model family, repeatable (e.g. steps=16, solver=rk4 for "
                                                 "flow_matching)."),
) -> None:
    """Generate showers from a trained model into a CaloChallenge-format file."""
    import warnings

    import numpy as np

    from caloforge.errors import ConfigError
    from caloforge.generate import generate_to_file, load_model, parse_energies, reference_energies
    from caloforge.runtime import set_threads

    if (energies is None) == (like is None):
        raise ConfigError("give either --energies with --n, or --like REF.h5")
    if energies is not None and (n is None or n <= 0):
        raise ConfigError("--energies needs --n N (showers per energy, N > 0)")
    if like is not None and (n is not None or theta or phi):
        raise ConfigError("--like takes energies and conditions from the reference file: drop --n/--theta/--phi")
    from caloforge.generate import parse_sampling

    options = parse_sampling(sampling or [])
    set_threads(threads or None)
    gen = load_model(model, device=device)
    if like is not None:
        incident, conditions, ref_voxels = reference_energies(like)
        if ref_voxels not in (None, gen.n_voxels):
            console.print(f"[yellow]warning:[/] {like} has {ref_voxels} voxels, the model {gen.n_voxels}; "
                          "only its energies and conditions are used")
        missing = [c for c in gen.condition_names[1:] if c not in conditions]
        if missing:
            raise ConfigError(f"{like}: the model is conditioned on {missing[0]}, but the file has no "
                              f"{missing[0]!r} dataset")
        unused = [c for c in conditions if c not in gen.condition_names]
        if unused:
            console.print(f"[yellow]note:[/] the model does not use {', '.join(unused)}; copied to the output")
    else:
        incident = np.repeat(parse_energies(energies), n)
        rng = np.random.default_rng(seed)
        conditions = {}
        if theta:
            conditions["incident_theta"] = _angles(theta, len(incident), rng, True, "--theta")
        if phi:
            conditions["incident_phi"] = _angles(phi, len(incident), rng, False, "--phi")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        generate_to_file(gen, output, incident, conditions=conditions, batch_size=batch_size, seed=seed,
                         progress=True, sampling=options)  # gen is already on --device
    for w in caught:
        console.print(f"[yellow]warning:[/] {w.message}")
    console.print(f"wrote {len(incident)} showers ({gen.n_voxels} voxels, {gen.geometry}) from {gen.path}")
    print(f"output: {output}")


@app.command("demo")
@user_errors
def demo_cmd(
    output: Path = typer.Option(Path("demo-run"), "--output", "-o", help="Directory for files, checkpoints and report."),
    iterations: Optional[int] = typer.Option(None, "--iterations", help="Training iterations (default: the demo "
                                             "config's budget, the same on every machine)."),
    minutes: float = typer.Option(20.0, "--minutes", help="Safety limit on the training time in minutes."),
    scale: float = typer.Option(0.1, "--scale", help="Fraction of the DS1-photon preset to train on (1 = 121k)."),
    holdout_scale: float = typer.Option(0.05, "--holdout-scale", help="Fraction of the preset held out for evaluation."),
    classifier: bool = typer.Option(True, "--classifier/--no-classifier", help="Run the classifier two-sample test."),
    seed: int = typer.Option(0, "--seed", help="Seed of the whole chain."),
) -> None:
    """Simulate → train → generate → evaluate on the embedded DS1-photon default; print the report path."""
    from caloforge.demo import run_demo

    result = run_demo(output, scale=scale, holdout_scale=holdout_scale, max_iterations=iterations,
                      safety_minutes=minutes,
                      classifier=classifier, seed=seed, log=console.print, progress=True)
    h = result.headline
    console.print()
    console.print(f"[bold]report:[/] {result.report.resolve()}")
    for key, label, fmt in (("etot_chi2_ndf", "χ²/ndf of E_tot/E_inc over energy points", "{:.2f}"),
                            ("classifier_auc", "classifier AUC (low-level; 0.5 = indistinguishable)", "{:.3f}"),
                            ("fpd", "FPD ×10³ (CaloChallenge units)", "{:.2f}")):
        value = h.get(key)
        if value is not None:
            console.print(f"  {label:52s} {fmt.format(value * 1e3 if key == 'fpd' else value)}")
    total = sum(result.timings.values())
    console.print(f"done in {total / 60:.1f} min (" + ", ".join(f"{k} {v:.0f} s" for k, v in result.timings.items()) + ")")


def main() -> None:  # console-script entry point
    app()


if __name__ == "__main__":
    main()
