"""The ``caloforge`` command line: a thin layer over the Python API.

Every command turns a :class:`caloforge.errors.CaloforgeError` into one red line on
stderr and exit code 2, with no traceback.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from caloforge import command
from caloforge.command import err_console, fail, user_errors
from caloforge.formatting import format_energy

app = typer.Typer(
    name="caloforge",
    help="Generative fast calorimeter simulation: geometries, shower files, reference simulation, "
    "generative models, training, generation and physics validation.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console(highlight=False, soft_wrap=True)  # log lines stay whole in files and pipes


def _geometry_names() -> str:
    """The geometry catalogue's preset names, for help texts (read when the CLI starts: never stale)."""
    from caloforge.geometry import GEOMETRIES

    return ", ".join(GEOMETRIES)


def _dataset_names() -> str:
    """The reference-simulation data-set presets (caloforge simulate --preset)."""
    from caloforge.simulate.presets import SIMULATION_PRESETS

    return ", ".join(SIMULATION_PRESETS)


def _config_names() -> str:
    """The configs shipped in caloforge/configs/ (caloforge train --config NAME)."""
    from caloforge.config import shipped_config_names

    return ", ".join(shipped_config_names())


# ----------------------------------------------------------------------------------
@app.command("geometry")
@user_errors
def geometry_cmd(
    spec: str = typer.Argument(..., help=f"Preset name ({_geometry_names()}), a CaloChallenge binning .xml or a "
                               "geometry .yaml."),
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
    if s.n_showers == 0:  # no energies, response or sparsity to show (they would be NaN)
        console.print("0 showers: the file holds no data")
    else:
        console.print(f"incident energy: {format_energy(s.energy_min)} … {format_energy(s.energy_max)}")
        if s.distinct_energies is not None:
            console.print(f"distinct energies ({len(s.distinct_energies)}): "
                          + ", ".join(format_energy(e) for e in s.distinct_energies))
        else:
            console.print("distinct energies: continuous spectrum")
    if s.conditions:
        console.print("extra conditions: " + ", ".join(s.conditions))
    if s.n_showers:
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
                                           help="Discrete energies, e.g. 1GeV,10GeV,100GeV (--n showers each; "
                                           "bare numbers are MeV)."),
    energy_range: Optional[str] = typer.Option(None, "--energy-range",
                                               help="Energy range LOW:HIGH, e.g. 1GeV:100GeV (--n showers in all; "
                                               "bare numbers are MeV)."),
    log: bool = typer.Option(False, "--log", help="Log-uniform instead of uniform in --energy-range."),
    theta: Optional[str] = typer.Option(None, "--theta",
                                        help="Polar angle in degrees (90 = perpendicular), or a range, e.g. 30:90."),
    phi: Optional[str] = typer.Option(None, "--phi", help="Azimuth of the tilt in degrees, or a range LOW:HIGH."),
    n: Optional[int] = typer.Option(None, "--n", "-n", help="Number of showers (per energy for --energies)."),
    preset: Optional[str] = typer.Option(None, "--preset",
                                         help=f"Dataset preset: {_dataset_names()}."),
    scale: float = typer.Option(1.0, "--scale", help="With --preset: multiply the preset's counts."),
    energy_scale: Optional[str] = typer.Option(None, "--energy-scale", help="visible (energy in the active "
                                               "medium) or calibrated (divided by the sampling fraction); default: "
                                               "the preset's / named geometry's dataset convention, visible for "
                                               "user geometries."),
    seed: int = typer.Option(0, "--seed", help="Random seed (same seed → identical file)."),
    workers: int = typer.Option(0, "--workers", "-j", help="Worker processes (0 = all cores)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    engine: str = typer.Option("gflash", "--engine", help="gflash (the parametrised simulator, fast) or geant4 "
                               "(real Geant4 transport in the geometry's sampling structure; compiled on first "
                               "use, see caloforge geant4 info)."),
    cut: float = typer.Option(0.7, "--cut", help="With --engine geant4: the production cut in mm."),
    fast_model: Optional[str] = typer.Option(None, "--fast-model", help="With --engine geant4: a caloforge model "
                                             "(run directory, checkpoint or TorchScript export) that replaces the "
                                             "showers of e±/γ entering the calorimeter's front face in its trained "
                                             "energy range (Geant4 fast simulation; docs/deployment-geant4.md)."),
    shard: Optional[str] = typer.Option(None, "--shard", help="Write only shard K/N (K = 1 … N) of the plan, for N "
                                        "batch jobs with the same arguments; join them with caloforge merge."),
) -> None:
    """Simulate reference showers (parametrised GFlash-type model, or Geant4) into a CaloChallenge file."""
    from caloforge.geometry import load_geometry
    from caloforge.io import check_output_file
    from caloforge.production import Shard
    from caloforge.simulate import write_plan
    from caloforge.simulate.api import setup_engine
    from caloforge.simulate.request import simulation_request

    check_output_file(output)  # a bad -o fails now, not after the simulation
    request = simulation_request(preset=preset, geometry=geometry, particle=particle, energies=energies,
                                 energy_range=energy_range, log=log, theta=theta, phi=phi, n=n, scale=scale,
                                 energy_scale=energy_scale)
    part = Shard.parse(shard) if shard is not None else None
    geometry_obj = load_geometry(request.geometry)
    setup = setup_engine(geometry_obj, request.parts, engine, request.energy_scale or None, cut_mm=cut,
                         fast_model=fast_model)
    count = write_plan(output, geometry_obj, request.parts, seed=seed, workers=workers or None, progress=not quiet,
                       attrs=request.attrs, energy_scale=request.energy_scale, derived=request.derived, engine=setup,
                       shard=part)
    of = f" (shard {part})" if part is not None else ""
    console.print(f"wrote {count} showers to {output}{of}")


# --- geant4: the compiled application behind simulate --engine geant4 -----------------
geant4_app = typer.Typer(help="The Geant4 application behind simulate --engine geant4: build it, say what it "
                         "uses, measure sampling fractions.", no_args_is_help=True)
app.add_typer(geant4_app, name="geant4")


@geant4_app.command("build")
@user_errors
def geant4_build_cmd(rebuild: bool = typer.Option(False, "--rebuild", help="Compile again even if cached."),
                     fast: bool = typer.Option(False, "--fast", help="Build caloforge-g4-fast, the application with "
                                               "caloforge's fast-simulation model (LibTorch; about a minute).")
                     ) -> None:
    """Compile the Geant4 application now (otherwise: on first use) into the cache."""
    from caloforge.geant4.build import ensure_built

    build = ensure_built(rebuild=rebuild, progress=True, fast=fast)
    console.print(f"{build.executable}")
    for key, value in build.info.items():
        console.print(f"  {key}: {value}")


@geant4_app.command("info")
@user_errors
def geant4_info_cmd() -> None:
    """Which Geant4, headers, compiler and physics list simulate --engine geant4 would use."""
    from caloforge.geant4.build import find_geant4

    install = find_geant4()
    for key, value in vars(install).items():
        console.print(f"{key}: {value}")


@geant4_app.command("calibrate")
@user_errors
def geant4_calibrate_cmd(
    geometry: str = typer.Option(..., "--geometry", "-g", help="Geometry preset, .xml or .yaml."),
    cut: float = typer.Option(0.7, "--cut", help="Production cut in mm."),
) -> None:
    """Measure (or read from the cache) each layer's sampling fraction with Geant4 electrons."""
    from caloforge.geant4.engine import sampling_fractions
    from caloforge.geometry import load_geometry

    geo = load_geometry(geometry)
    fractions = sampling_fractions(geo, cut_mm=cut)
    table = Table(box=box.SIMPLE)
    for col in ("layer", "name", "structure", "sampling fraction"):
        table.add_column(col)
    for layer, f in zip(geo.layers, fractions):
        if layer.sampling is not None and layer.thickness > 0:
            slabs = " + ".join(f"{s.thickness:g} mm {s.material}{'*' if s.active else ''}" for s in layer.sampling.slabs)
            table.add_row(str(layer.id), layer.name, f"{layer.sampling.repeats} × ({slabs})", f"{f:.5f}")
    console.print(table)


# --- simulate-paper: the CaloGAN and ATLAS GAN data sets ----------------------------
@app.command("simulate-paper")
@user_errors
def simulate_paper_cmd(
    dataset: str = typer.Argument(..., help="calogan | atlas-gan | atlas-gan-25gev"),
    output: Path = typer.Option(..., "--output", "-o", help="Output shower file (.h5 / .hdf5)."),
    particle: str = typer.Option("photon", "--particle", "-p", help="calogan: e+ | gamma | pi+ (atlas: photon)."),
    layout: str = typer.Option("calochallenge", "--layout", help="calochallenge, or calogan (energy, layer_0..2; "
                               "calogan only)."),
    scale: float = typer.Option(1.0, "--scale", help="Multiply the preset's counts."),
    seed: int = typer.Option(0, "--seed", help="Random seed (same seed → identical file)."),
    workers: int = typer.Option(0, "--workers", "-j", help="Worker processes (0 = all cores)."),
) -> None:
    """Simulate the CaloGAN (e+, γ, π+ at 1–100 GeV) or ATLAS GAN (photons with impact η) data set."""
    from caloforge.errors import ConfigError
    from caloforge.io import write_calogan, write_showers
    from caloforge.simulate.paper_data import simulate_atlas_gan, simulate_calogan

    if layout not in ("calochallenge", "calogan"):
        raise ConfigError(f"--layout must be calochallenge or calogan, not {layout!r}")
    if dataset == "calogan":
        data = simulate_calogan(particle, seed=seed, scale=scale, workers=workers or None)
    elif dataset in ("atlas-gan", "atlas-gan-25gev"):
        if layout == "calogan":
            raise ConfigError("--layout calogan is for the calogan data set only")
        data = simulate_atlas_gan(dataset, seed=seed, scale=scale, workers=workers or None)
    else:
        raise ConfigError(f"unknown paper data set {dataset!r}: use calogan, atlas-gan or atlas-gan-25gev")
    if layout == "calogan":
        write_calogan(output, data.incident_energy, data.showers)
    else:
        write_showers(output, data.incident_energy, data.showers, data.conditions or None)
    console.print(f"wrote {len(data)} showers to {output}")


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
    protocol: Optional[str] = typer.Option(None, "--protocol", help="calochallenge (the official definitions, "
                                           "comparable with the published table; default on ds1-photons, "
                                           "ds1-pions, ds2, ds3) or caloforge (default elsewhere)."),
    cls_epochs: Optional[int] = typer.Option(None, "--cls-epochs", min=1, help="Classifier epochs (default: 50; "
                                             "fewer for a quick, non-official run)."),
    cls_hidden: Optional[int] = typer.Option(None, "--cls-hidden", min=1, help="Classifier nodes per hidden layer "
                                             "(default: 2048 under calochallenge, 512 under caloforge)."),
) -> None:
    """Validate generated showers against a reference: per-feature separation power and χ²/ndf
    (inclusive and per incident energy), E_tot χ², FPD/KPD, optional classifier AUC, plots and an
    offline HTML report.  Files are streamed, so DS3-sized files fit in memory."""
    from caloforge.evaluate import compare
    from caloforge.evaluate.report import format_headline, write_report
    from caloforge.geometry import load_geometry

    from caloforge.io import check_output_dir

    check_output_dir(output)  # before minutes of work, not after
    geo = load_geometry(geometry)
    settings = {k: v for k, v in (("epochs", cls_epochs), ("n_hidden", cls_hidden)) if v is not None}
    result = compare(reference, generated, geo, per_energy=per_energy, classifier=classifier, seed=seed,
                     device=device, progress=True, max_showers=max_showers, training=training, protocol=protocol,
                     classifier_settings=settings or None)
    with console.status("writing plots and report"):
        html_path = write_report(result, output, plots=plots)
    from caloforge.evaluate.calochallenge import write_official_outputs

    write_official_outputs(result.metrics, output)  # the official evaluator's text files, same names
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


# --- leaderboard (caloforge.leaderboard) ------------------------------------------
@app.command("leaderboard")
@user_errors
def leaderboard_cmd(
    sources: list[Path] = typer.Argument(..., help="Evaluation report directories (metrics.json), training run "
                                         "directories (RUN/report/metrics.json, RUN/bench.json), bench JSON files, "
                                         "or directories holding them."),
    output: Path = typer.Option(..., "--output", "-o", help="Directory for leaderboard.csv, .md, .png and .html."),
    dataset: Optional[str] = typer.Option(None, "--dataset", help="ds1-photons, ds1-pions, ds2 or ds3: whose "
                                          "published CaloChallenge 2022 entries are drawn (default: the reports' "
                                          "geometry)."),
    bench: Optional[list[str]] = typer.Option(None, "--bench", help="SOURCE=BENCH.json: the timings of one source, "
                                              "repeatable (default: bench.json beside the run or report)."),
    reference: Optional[Path] = typer.Option(None, "--reference", help="The reference shower file every entry must "
                                             "have been evaluated against (default: the first entry's)."),
    skip_mismatched: bool = typer.Option(False, "--skip-mismatched", help="Leave out, with a warning, entries "
                                         "evaluated against another reference file (default: refuse them)."),
    timing: str = typer.Option("cpu", "--timing", help="cpu or gpu: which timings give ms per shower."),
) -> None:
    """Compare models evaluated on the same reference file: one table and one Pareto plot of quality
    (classifier AUC, FPD) against generation cost (ms per shower at batch 10 000), with the published
    CaloChallenge 2022 entries of the dataset in grey."""
    from caloforge.errors import ConfigError
    from caloforge.leaderboard import build_leaderboard

    pairs = {}
    for item in bench or []:
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise ConfigError(f"--bench {item!r}: expected SOURCE=BENCH.json")
        pairs[key] = value
    board = build_leaderboard(sources, output, dataset=dataset, benches=pairs, reference=reference,
                              skip_mismatched=skip_mismatched, timing=timing,
                              log=lambda s: err_console.print(f"[yellow]warning:[/] {s}"))
    published = f", {len(board.published)} published entries in grey" if board.published else ", no published entries"
    console.print(f"dataset: {board.dataset or board.geometry} (from {board.dataset_origin}){published}")
    console.print(f"reference: {board.reference_label}")
    for e in board.entries:
        front = ", ".join(n for n, on in (("AUC", e.pareto_auc), ("FPD", e.pareto_fpd)) if on)
        console.print(f"  {e.name}: {e.family or '–'}" + (f"  [bold]Pareto-optimal ({front})[/]" if front else ""))
    for kind in ("csv", "md", "png", "html"):
        if kind in board.files:
            print(f"{kind}: {board.files[kind]}")


# --- train / generate (caloforge.train, caloforge.generate) -----------------------
@app.command("train")
@user_errors
def train_cmd(
    config: str = typer.Option(..., "--config", "-c", help=f"Training config YAML, or a shipped config name: "
                               f"{_config_names()}."),
    data: Path = typer.Option(..., "--data", "-d", help="Training shower file (CaloChallenge HDF5)."),
    output: Path = typer.Option(..., "--output", "-o", help="Run directory: checkpoints, best, scores.csv, log.csv, tensorboard/."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in OUTPUT from its newest checkpoint."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda, cuda:N or auto."),
    max_time: Optional[str] = typer.Option(None, "--max-time", help="Time budget for this call, e.g. 90s, 10m, 2h."),
    max_iterations: Optional[int] = typer.Option(None, "--max-iterations", help="Stop after N iterations in total."),
    budget_clock: Optional[str] = typer.Option(None, "--budget-clock", help="What --max-time counts: wall (default) "
                                               "or cpu (CPU seconds of the process: fair on a shared machine)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Override training.seed of the config."),
    threads: int = typer.Option(0, "--threads", help="Torch threads per process (0 = the CPUs this process may "
                                "use, divided among --nproc processes)."),
    nproc: int = typer.Option(1, "--nproc", help="Data-parallel processes on this machine (launches torchrun's "
                              "elastic agent; gloo on CPU, NCCL on GPU)."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress (a bar on a terminal, "
                                  "a line every 30 s otherwise)."),
    init_from: Optional[Path] = typer.Option(None, "--init-from", help="Start from a trained model's weights: a "
                                             "checkpoint directory (RUN_DIR/best) or run directory of the same "
                                             "family; see training.fine_tune and docs/fine-tuning.md."),
    init_partial: bool = typer.Option(False, "--init-partial", help="With --init-from: carry over only the "
                                      "tensors whose names and shapes match (another geometry or width)."),
) -> None:
    """Train a model of any family; checkpoints are scored by the E_tot χ² on held-out showers."""
    from caloforge.launch import TrainingRequest, run_training, without_nproc

    request = TrainingRequest(config, data, output, resume=resume, device=device, max_time=max_time,
                              max_iterations=max_iterations, budget_clock=budget_clock, seed=seed, threads=threads,
                              nproc=nproc, progress=progress, init_from=init_from, init_partial=init_partial)
    # each rank runs this same command without --nproc
    result = run_training(request, rank_args=["-m", "caloforge", *without_nproc(sys.argv[1:])])
    if result is None or int(os.environ.get("RANK", "0")) != 0:
        return
    if result.best_iteration is not None:
        console.print(f"best checkpoint: iteration {result.best_iteration}, score {result.best_score:.4g}")
    if result.stopped == "diverged":
        fail(result.message, code=1)
    console.print(f"{result.message}; run directory {result.run_dir}")
    if result.best_checkpoint is not None:
        print(f"best: {result.best_checkpoint}")


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
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Showers per block (forward pass and "
                                             "seeding unit). Default: by memory, 10 000 where a block fits in "
                                             "2 GiB, fewer on granular grids (the same on every machine)."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda, cuda:N or auto."),
    threads: int = typer.Option(0, "--threads", help="Torch threads (0 = the CPUs this process may use)."),
    seed: int = typer.Option(0, "--seed", help="Random seed."),
    engine: str = typer.Option("auto", "--engine", help="auto (ONNX Runtime for large CPU requests when it "
                               "reproduces the model; from 50 000 showers bf16 dense layers where they apply and "
                               "pass the physics check; else PyTorch), pytorch, onnxruntime (fp32) or "
                               "bf16."),
    shard: Optional[str] = typer.Option(None, "--shard", help="Write only shard K/N (K = 1 … N) of the request, "
                                        "for N batch jobs; join them with caloforge merge. Every shard must use "
                                        "the same --seed and --batch-size."),
    sampling: Optional[list[str]] = typer.Option(None, "--sampling", help="Generation option KEY=VALUE of the "
                                                 "model family, repeatable (e.g. steps=16, solver=rk4 for "
                                                 "flow_matching)."),
) -> None:
    """Generate showers from a trained model into a CaloChallenge-format file (or one shard of it)."""
    import warnings

    from caloforge.generate import load_model, parse_sampling
    from caloforge.io import check_output_file
    from caloforge.production import (Shard, check_request_options, generate_production, request_energies,
                                      request_like)
    from caloforge.runtime import set_threads

    part = Shard.parse(shard) if shard is not None else None
    check_request_options(energies, n, like, theta, phi)
    check_output_file(output)  # before loading the model, not after generating
    options = parse_sampling(sampling or [])
    set_threads(threads or None)
    gen = load_model(model, device=device)
    request = request_like(gen, like) if like is not None else request_energies(energies, n, theta, phi, seed)
    for text in request.warnings:
        console.print(f"[yellow]warning:[/] {text}")
    for text in request.notes:
        console.print(f"[yellow]note:[/] {text}")
    incident, conditions = request.incident_energy, request.conditions
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, written = generate_production(gen, output, incident, conditions=conditions, batch_size=batch_size,
                                         seed=seed, shard=part, progress=True, engine=engine,
                                         sampling=options)  # gen is already on --device
    for w in caught:
        console.print(f"[yellow]warning:[/] {w.message}")
    of = f" (shard {part} of {len(incident)})" if part is not None else ""
    import h5py

    with h5py.File(output, "r") as f:  # the block actually used, recorded for reproduction
        block = int(f.attrs["batch_size"])
    console.print(f"wrote {written} showers{of} ({gen.n_voxels} voxels, {gen.geometry}) from {gen.path}, "
                  f"in blocks of {block} (--batch-size {block} reproduces them)")
    print(f"output: {output}")


# --- tune (caloforge.tuning) -------------------------------------------------------
@app.command("tune")
@user_errors
def tune_cmd(
    output: Path = typer.Option(..., "--output", "-o", help="Study directory: trials/ (run directories), best, "
                                "report/, and study.db when --storage is not given."),
    config: Optional[str] = typer.Option(None, "--config", "-c", help="Base training config (YAML or shipped name: see caloforge train --help)."),
    space: Optional[Path] = typer.Option(None, "--space", help="Search space YAML: config key → {type: float|int|"
                                         "log|categorical, low, high | choices}."),
    data: Optional[Path] = typer.Option(None, "--data", "-d", help="Training shower file (CaloChallenge HDF5)."),
    trials: int = typer.Option(20, "--trials", help="Finished trials the study should hold, counted over all workers."),
    storage: Optional[str] = typer.Option(None, "--storage", help="sqlite:///DIR/study.db (default), "
                                          "postgresql://user@host/db, or journal:/shared/study.journal; the same "
                                          "storage and study name on several machines make one study."),
    study_name: Optional[str] = typer.Option(None, "--study-name", help="Study name (default: the space file's name)."),
    seeds: int = typer.Option(1, "--seeds", help="Train every configuration with K seeds (training.seed + 0…K-1); "
                              "the objective is their mean, the spread is reported."),
    metric: str = typer.Option("chi2_etot", "--metric", help="Objective, minimised: chi2_etot (best checkpoint's "
                               "E_tot χ²), another checkpoint score (val_nll), or auc, auc_high, fpd, kpd, "
                               "etot_chi2_ndf from the evaluator on the validation split."),
    sampler: str = typer.Option("tpe", "--sampler", help="tpe, cmaes (evolutionary), random or grid."),
    pruner: str = typer.Option("median", "--pruner", help="median, hyperband or none: stop trials whose "
                               "checkpoint scores fall behind."),
    prune_above: Optional[float] = typer.Option(None, "--prune-above", help="Also stop any trial whose running "
                                                "checkpoint score exceeds this value."),
    startup_trials: int = typer.Option(5, "--startup-trials", help="Trials before TPE/CMA-ES model the space and "
                                       "the median pruner starts pruning."),
    trial_time: Optional[str] = typer.Option(None, "--trial-time", help="Time budget of one trial, all seeds, "
                                             "e.g. 10m (each seed gets an equal share)."),
    max_iterations: Optional[int] = typer.Option(None, "--max-iterations", help="Iteration budget of each "
                                                 "training run (default: the config's)."),
    nproc_per_trial: int = typer.Option(1, "--nproc-per-trial", help="Train each trial data-parallel with "
                                        "caloforge train --nproc K."),
    threads: int = typer.Option(0, "--threads", help="Torch threads per training process (0 = the CPUs this "
                                "process may use)."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda, cuda:N or auto."),
    worker: int = typer.Option(0, "--worker", help="This worker's number (e.g. $SLURM_ARRAY_TASK_ID): seeds "
                               "its sampler differently from the other workers'."),
    seed: int = typer.Option(0, "--seed", help="Sampler seed (with --worker)."),
    timeout: Optional[str] = typer.Option(None, "--timeout", help="Start no new trial after this time, e.g. 3h "
                                          "(a batch job's wall time minus one trial)."),
    worker_trials: Optional[int] = typer.Option(None, "--worker-trials", help="Run at most N trials in this worker."),
    enqueue_base: bool = typer.Option(True, "--enqueue-base/--no-enqueue-base", help="Make the first trial of a "
                                      "new study the base config's own settings (the baseline to beat)."),
    report: bool = typer.Option(False, "--report", help="Print the best trials and parameter importances, write "
                                "Optuna's plots to OUTPUT/report/, and exit."),
    top: int = typer.Option(5, "--top", help="With --report: how many trials to list."),
) -> None:
    """Hyperparameter search on Optuna: every trial is a training run directory, scored by the E_tot χ²
    of its best checkpoint (or an evaluator metric), averaged over --seeds, pruned from checkpoint scores.
    Run the same command on several machines against one --storage to make them one study."""
    from caloforge.errors import ConfigError
    from caloforge.tuning.storage import default_storage_url, describe_storage, open_storage

    if report:
        from caloforge.tuning.report import best_table, headline, importance_line, study_report

        url = storage or default_storage_url(output)
        if storage is None and not (output / "study.db").is_file():
            raise ConfigError(f"{output / 'study.db'}: no study here; give --storage URL of the study")
        rep = study_report(open_storage(url), study_name, output, top=top)
        console.print(headline(rep, describe_storage(url)))
        (console if console.is_terminal else Console(highlight=False, width=200)).print(best_table(rep))
        if (importances := importance_line(rep)) is not None:
            console.print(importances)
        for note in rep.notes:
            console.print(f"[yellow]note:[/] {note}")
        if rep.best:
            console.print(f"best trial: {rep.best[0]['trial_dir']} (caloforge generate --model {output / 'best'} ...)")
        print(f"report: {output / 'report'}")
        return
    from caloforge.tuning.study import TuneOptions, run_worker

    missing = [name for name, v in (("--config", config), ("--space", space), ("--data", data)) if v is None]
    if missing:
        raise ConfigError(f"caloforge tune needs {', '.join(missing)} (or --report to summarise a study)")
    options = TuneOptions(trials=trials, seeds=seeds, metric=metric, sampler=sampler, pruner=pruner,
                          prune_above=prune_above, startup_trials=startup_trials, trial_time=trial_time,
                          max_iterations=max_iterations, nproc_per_trial=nproc_per_trial, threads=threads or None,
                          device=device, worker=worker, seed=seed, timeout=timeout, worker_trials=worker_trials,
                          enqueue_base=enqueue_base, study_name=study_name)
    summary = run_worker(config, space, data, output, storage, options, log=console.print)
    counts = ", ".join(f"{v} {k.lower()}" for k, v in sorted(summary.counts.items()))
    console.print(f"worker {worker} ran {len(summary.trials_run)} trial(s); {summary.stopped}. Study "
                  f"{summary.study_name} ({summary.storage}): {counts}")
    if summary.best_number is not None:
        spread = f" ± {summary.best_std:.3g}" if summary.best_std else ""
        console.print(f"best trial {summary.best_number}: {metric} {summary.best_value:.4g}{spread}")
        if (output / "best").exists():
            print(f"best: {output / 'best'}")


# --- merge (caloforge.production) ----------------------------------------------------
@app.command("merge")
@user_errors
def merge_cmd(
    parts: list[Path] = typer.Argument(..., help="Shard files written by caloforge generate ... --shard K/N."),
    output: Path = typer.Option(..., "--output", "-o", help="Merged shower file (CaloChallenge HDF5)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress display."),
) -> None:
    """Join the N shards of a sharded generation into one file, identical to the unsharded run.

    Refuses shards of different models, geometries, seeds, batch sizes or requests, and a
    missing or repeated shard (one line, exit 2); nothing is written then."""
    from caloforge.production import merge_shards

    path, n = merge_shards(parts, output, progress=not quiet)
    console.print(f"merged {len(parts)} shards: {n} showers")
    print(f"output: {path}")


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
    config: str = typer.Option("demo-flow-matching", "--config", "-c", help="demo-flow-matching (flow matching, default), demo (CaloShowerGAN) or a YAML path."),
) -> None:
    """Simulate → train → generate → evaluate on the embedded DS1-photon default; print the report path."""
    from caloforge.demo import run_demo

    result = run_demo(output, scale=scale, holdout_scale=holdout_scale, max_iterations=iterations,
                      safety_minutes=minutes, config=config,
                      classifier=classifier, seed=seed, log=console.print, progress=True)
    h = result.headline
    console.print()
    console.print(f"[bold]report:[/] {result.report.resolve()}")
    console.print(f"  numbers from the {h.get('protocol', 'caloforge')} protocol (comparable with the CaloChallenge table; "
                  f"classifier: {h.get('classifier_epochs')} of the official 50 epochs)" if h.get("classifier_epochs")
                  else f"  numbers from the {h.get('protocol', 'caloforge')} protocol")
    for key, label, fmt in (("etot_chi2_ndf", "χ²/ndf of E_tot/E_inc over energy points", "{:.2f}"),
                            ("auc_low", "classifier AUC low-level (0.5 = indistinguishable)", "{:.3f}"),
                            ("auc_high", "classifier AUC high-level", "{:.3f}"),
                            ("fpd_x1e3", "FPD ×10³", "{:.2f}"),
                            ("kpd_x1e3", "KPD ×10³", "{:.3f}")):
        value = h.get(key)
        if value is not None:
            console.print(f"  {label:52s} {fmt.format(value)}")
    total = sum(result.timings.values())
    console.print(f"done in {total / 60:.1f} min (" + ", ".join(f"{k} {v:.0f} s" for k, v in result.timings.items()) + ")")


# --- export / bench (caloforge.export, caloforge.bench) ----------------------------
@app.command("export")
@user_errors
def export_cmd(
    model: Path = typer.Option(..., "--model", "-m", help="Checkpoint directory (e.g. RUN_DIR/best) or run directory."),
    format: str = typer.Option("onnx", "--format", "-f", help="onnx (ONNX Runtime, ROOT SOFIE; opset 17), "
                               "torchscript (LibTorch C++, examples/cpp; portable) or aoti (AOTInductor package "
                               "for LibTorch's AOTIModelPackageLoader and examples/cpp: compiled ahead of time "
                               "for this CPU and torch version, a minute or more of C++ compilation)."),
    output: Path = typer.Option(..., "--output", "-o", help="Output file (.onnx, .pt, or .pt2 for aoti); written "
                                "only after the parity check passed."),
    tolerance: float = typer.Option(1e-5, "--tolerance", help="Largest allowed |Δvoxel| / E_shower against "
                                    "PyTorch on the same noise."),
    exporter: str = typer.Option("auto", "--exporter", help="ONNX exporter: auto (TorchScript-based, then "
                                 "dynamo), torchscript or dynamo."),
) -> None:
    """Export the sampling network (noise + physical conditions → voxel energies in MeV) for deployment.

    The graph includes the condition encoding, the inverse preprocessing and the final
    clamp at 0; the batch size is dynamic; the file carries the geometry, voxel count,
    condition names/encoding, energy range and noise distribution as metadata.  The
    written file is run on the same noise as PyTorch before it is kept.

    Examples: caloforge export -m runs/photons/best -f onnx -o photons.onnx;
    caloforge export -m runs/photons/best -f aoti -o photons.pt2 (then
    build/cpp/caloforge_generate photons.pt2 --energy 65536 --n 1000 -o showers.csv).
    """
    from caloforge.export import check_output_path, export_model

    check_output_path(output, format)  # before the model is loaded
    result = export_model(model, format, output, tolerance=tolerance, exporter=exporter)
    m = result.metadata
    console.print(f"{m['family']} ({m['geometry']}, {m['n_voxels']} voxels; inputs noise [N, {m['noise_dim']}], "
                  f"conditions [N, {len(m['condition_names'])}] = {', '.join(m['condition_names'])})")
    console.print(f"parity vs PyTorch on {result.n_checked} showers: max |Δ|/E_shower = {result.max_deviation:.2e} "
                  f"(tolerance {tolerance:g})")
    print(f"output: {result.path}")


@app.command("bench")
@user_errors
def bench_cmd(
    model: Path = typer.Option(..., "--model", "-m", help="Checkpoint directory (e.g. RUN_DIR/best) or run directory."),
    threads: int = typer.Option(1, "--threads", help="CPU threads for every path (stated in the table and JSON)."),
    batches: str = typer.Option("1,100,10000", "--batches", help="Batch sizes (the CaloChallenge protocol: 1,100,10000)."),
    repeats: int = typer.Option(5, "--repeats", help="Timed repeats per batch size; the median is reported."),
    paths: str = typer.Option(",".join(("pytorch", "generate", "onnxruntime", "cpp")), "--paths",
                              help="Paths to time: pytorch, generate, onnxruntime, cpp (examples/cpp, built in "
                              "build/cpp), bf16 (the engine's bf16 path, timed only when it passes its physics "
                              "check), cuda "
                              "(pytorch on the GPU; added automatically when one is present)."),
    energy: Optional[str] = typer.Option(None, "--energy", help="Incident energy of the timed showers, e.g. 65GeV "
                                         "(default: the geometric mean of the trained range)."),
    cpp_program: Optional[Path] = typer.Option(None, "--cpp-program", help="The built C++ example (default: "
                                               "build/cpp/caloforge_generate)."),
    json_out: Optional[Path] = typer.Option(None, "--json", "-o", help="Also write the full report as JSON."),
    sampling: Optional[list[str]] = typer.Option(None, "--sampling", help="Generation option KEY=VALUE, "
                                                 "repeatable, for every path (e.g. steps=4 for an ODE model)."),
) -> None:
    """Time generation with the CaloChallenge protocol (ms per shower at batch 1, 100, 10 000; warm-up
    excluded; median of repeats) for the PyTorch, ONNX Runtime and C++ paths, next to the published
    CaloChallenge 2022 timings of the same dataset."""
    import json as _json

    from caloforge.bench import bench, format_table
    from caloforge.errors import ConfigError
    from caloforge.generate import parse_energies, parse_sampling

    options = parse_sampling(sampling or [])
    try:
        batch_list = [int(b) for b in batches.split(",") if b.strip()]
    except ValueError:
        raise ConfigError(f"--batches {batches!r}: expected comma-separated integers, e.g. 1,100,10000") from None
    e = None
    if energy is not None:
        parsed = parse_energies(energy)
        if len(parsed) != 1:
            raise ConfigError(f"--energy {energy!r}: give one energy")
        e = float(parsed[0])
    if json_out is not None and (json_out.is_dir() or not (json_out.parent if str(json_out.parent) else Path(".")).is_dir()):
        raise ConfigError(f"{json_out}: cannot be written (not a file in an existing directory)")
    report = bench(model, paths=[p.strip() for p in paths.split(",") if p.strip()], batches=batch_list,
                   threads=threads, repeats=repeats, energy=e, cpp_program=cpp_program, sampling=options,
                   log=lambda s: err_console.print(f"[dim]{s}[/]"))
    m = report["model"]
    size = f"{m['deployed_parameters']:,} deployed" if m.get("deployed_parameters") else f"{m['parameters']:,}"
    opts = "".join(f", {k} {v}" for k, v in m["sampling"].items())  # e.g. the ODE steps timed
    table = Table(title=f"ms per shower, wall (process CPU): {m['family']} on {m['geometry']} ({size} parameters"
                  f"{opts}), median of {repeats}", box=box.SIMPLE_HEAD, pad_edge=False)
    for col in ["model", "path", "device"] + [f"batch {b}" for b in batch_list]:
        table.add_column(col, justify="left" if col in ("model", "path", "device") else "right", no_wrap=True)
    for row in format_table(report):
        table.add_row(*row)
    (console if console.is_terminal else Console(highlight=False, width=140)).print(table)
    mach = report["machine"]
    console.print(f"{report['date']}; {mach['cpu']}, {mach['usable_cpus']} usable CPUs, {threads} thread(s), "
                  f"load average {mach['load_average']}; GPU: {mach['gpu'] or 'none'}")
    if json_out is not None:
        from caloforge.io import atomic_path

        with atomic_path(json_out) as tmp:
            tmp.write_text(_json.dumps(report, indent=1))
        print(f"json: {json_out}")


def main() -> None:  # console-script entry point
    command.mark_entry_point()
    app()


if __name__ == "__main__":
    main()
