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
console = Console(highlight=False)
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
# --- evaluate (caloforge.evaluate) -------------------------------------------------
# --- train / generate (caloforge.train, caloforge.generate) -----------------------


def main() -> None:  # console-script entry point
    app()


if __name__ == "__main__":
    main()
