"""One running Geant4 application: a geometry in, showers out.

:class:`Geant4Process` starts the compiled ``caloforge-g4`` program (:mod:`.build`) on a
geometry description (:mod:`.description`) and asks it for showers block by block over
its standard input; the program answers with binary records on its standard output
(the protocol: ``docs/geant4.md``, "The application").  Geant4 transports the particles and
scores the deposits; everything else (what to simulate, seeds, calibration, the file)
stays in Python.

The program dies with its parent (``PR_SET_PDEATHSIG``) and on end of input, so a
killed worker leaves no Geant4 process behind.  Its own diagnostics go to a log file
next to the description; a failure is raised as a one-line :class:`EngineError`
quoting the program's ``error:`` line, or naming the signal that killed it.
"""

from __future__ import annotations

import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from caloforge.errors import EngineError, Geant4Died, describe_exit
from caloforge.geometry import Geometry

from .build import Build, ensure_built
from .description import write_description

__all__ = ["Geant4Process", "G4Showers", "G4_PARTICLES", "DEFAULT_CUT_MM"]

READY_MAGIC = 0x34474643  # "CFG4"
DONE_MAGIC = 0x454E4F44  # "DONE"
DEFAULT_CUT_MM = 0.7  # Geant4's default production cut
# caloforge's particle names → Geant4's
G4_PARTICLES = {"photon": "gamma", "electron": "e-", "positron": "e+", "pion": "pi+"}


@dataclass
class G4Showers:
    """What the application returns for ``n`` events (MeV; visible, i.e. active-medium, energy)."""

    voxels: np.ndarray  # (n, n_voxels) float32: active energy in each readout cell
    active: np.ndarray  # (n, n_layers) float64: all active energy in each layer, in or out of the cells
    passive: np.ndarray  # (n, n_layers) float64: energy in each layer's absorber
    cpu_seconds: np.ndarray  # (n,) float64: the process's CPU time for each event
    # the fast-simulation build only (None otherwise): per event
    model_cpu: np.ndarray | None = None  # CPU seconds in the network
    n_fast: np.ndarray | None = None  # showers the model made
    n_out_of_range: np.ndarray | None = None  # e±/γ through the front face outside the trained energies: transported
    n_wrong_entry: np.ndarray | None = None  # e±/γ in range entering elsewhere than the front face: transported
    fast_inputs: np.ndarray | None = None  # (n, noise_dim + n_conditions) float32: the first fast shower's inputs

    def __len__(self) -> int:
        return len(self.cpu_seconds)


class Geant4Process:
    """A ``caloforge-g4`` process simulating showers in ``geometry``.

    >>> from caloforge.geant4 import geant4_available
    >>> if geant4_available():  # doctest: +SKIP
    ...     with Geant4Process("ds2") as g4:
    ...         out = g4.run("electron", seeds=[1], energies=[1000.0],
    ...                      positions=[[0, 0, -10.0]], directions=[[0, 0, 1.0]])
    """

    def __init__(self, geometry: Geometry | str, *, cut_mm: float = DEFAULT_CUT_MM, build: Build | None = None,
                 fast_model: str | Path | None = None, visible_scale=None) -> None:
        """``fast_model``: a TorchScript export run by ``caloforge-g4-fast`` (``build`` must be that
        build) on every e±/γ entering the calorimeter's front face in its trained energy range;
        ``visible_scale``: per-layer factors from the model's energies to visible energy (default 1)."""
        from caloforge.geometry import load_geometry

        self.geometry = load_geometry(geometry)
        self.build = build or ensure_built(fast=fast_model is not None)
        self.cut_mm = float(cut_mm)
        self._dir = tempfile.TemporaryDirectory(prefix="caloforge-g4-")
        desc = write_description(self.geometry, Path(self._dir.name) / "geometry.txt", cut_mm=self.cut_mm)
        self.log_path = Path(self._dir.name) / "geant4.log"
        self._log = open(self.log_path, "wb")
        env = self.build.environ()
        argv = [str(self.build.executable), str(desc)]
        if fast_model is not None:
            scale = np.ones(self.geometry.n_layers) if visible_scale is None else np.asarray(visible_scale, float)
            argv += [str(fast_model), ",".join(repr(float(f)) for f in scale)]
        try:
            # its own session: a terminal's Ctrl-C or a batch system's signal to the group reaches
            # caloforge, which stops it (end of input); it dies with its parent in any case (PDEATHSIG)
            self._proc = subprocess.Popen(argv, stdin=subprocess.PIPE,
                                          stdout=subprocess.PIPE, stderr=self._log, env=env, bufsize=0,
                                          start_new_session=True)
        except OSError as exc:
            self.close()
            raise EngineError(f"{self.build.executable}: cannot start the Geant4 application ({exc.strerror})") from None
        ready = self._read(16, "starting")
        magic, n_voxels, n_layers, version = np.frombuffer(ready, "<u4")
        if magic != READY_MAGIC:
            self.close()
            raise EngineError(f"{self.build.executable}: not a caloforge Geant4 application (bad ready record)")
        self.fast = version == 2
        if self.fast:
            self.noise_dim, self.n_conditions = (int(v) for v in np.frombuffer(self._read(8, "starting"), "<u4"))
        if n_voxels != self.geometry.n_voxels or n_layers != self.geometry.n_layers:
            self.close()
            raise EngineError(f"Geant4 application reads {n_voxels} voxels in {n_layers} layers, the geometry "
                              f"{self.geometry.name!r} has {self.geometry.n_voxels} in {self.geometry.n_layers}")
        self.n_voxels, self.n_layers = int(n_voxels), int(n_layers)
        fields = [("cpu", "<f8"), ("active", "<f8", (self.n_layers,)), ("passive", "<f8", (self.n_layers,)),
                  ("voxels", "<f4", (self.n_voxels,))]
        if self.fast:
            fields = ([("model_cpu", "<f8"), ("n_fast", "<f8"), ("n_out_of_range", "<f8"), ("n_wrong_entry", "<f8")]
                      + fields + [("fast_inputs", "<f4", (self.noise_dim + self.n_conditions,))])
        self._record = np.dtype(fields)

    # ----- the protocol ----------------------------------------------------------------
    def run(self, particle: str, seeds, energies, positions, directions) -> G4Showers:
        """Simulate one event per row: ``seeds`` (uint64 > 0), ``energies`` [MeV], gun ``positions``
        [mm] and unit ``directions``, shape (n, 3)."""
        name = G4_PARTICLES.get(particle, particle)
        seeds = np.asarray(seeds, dtype=np.uint64).reshape(-1)
        energies = np.asarray(energies, dtype=float).reshape(-1)
        pos = np.asarray(positions, dtype=float).reshape(-1, 3)
        dirs = np.asarray(directions, dtype=float).reshape(-1, 3)
        n = len(seeds)
        if not (len(energies) == len(pos) == len(dirs) == n):
            raise ValueError("seeds, energies, positions and directions must have one row per event")
        lines = [f"block {n} {name}"]
        lines += [f"{int(s)} {e!r} {p[0]!r} {p[1]!r} {p[2]!r} {d[0]!r} {d[1]!r} {d[2]!r}"
                  for s, e, p, d in zip(seeds.tolist(), energies.tolist(), pos.tolist(), dirs.tolist())]
        try:
            self._proc.stdin.write(("\n".join(lines) + "\n").encode())
            self._proc.stdin.flush()
        except (BrokenPipeError, OSError):
            self._fail("receiving a request")
        data = self._read(n * self._record.itemsize, "simulating")
        done = np.frombuffer(self._read(4, "simulating"), "<u4")[0]
        if done != DONE_MAGIC:
            self._fail("simulating (corrupt output)")
        rec = np.frombuffer(data, dtype=self._record, count=n)
        out = G4Showers(voxels=rec["voxels"].copy(), active=rec["active"].copy(), passive=rec["passive"].copy(),
                        cpu_seconds=rec["cpu"].copy())
        if self.fast:
            out.model_cpu = rec["model_cpu"].copy()
            for name in ("n_fast", "n_out_of_range", "n_wrong_entry"):
                setattr(out, name, rec[name].astype(np.int64))
            out.fast_inputs = rec["fast_inputs"].copy()
        return out

    def set_fast(self, on: bool) -> None:
        """``caloforge-g4-fast`` only: the model on (default) or off (full simulation of everything) for the
        following blocks, in the same process."""
        if not self.fast:
            raise EngineError("set_fast needs the fast-simulation build (fast_model=...)")
        try:
            self._proc.stdin.write(f"fast {'on' if on else 'off'}\n".encode())
            self._proc.stdin.flush()
        except (BrokenPipeError, OSError):
            self._fail("receiving a request")

    def set_fast_batch(self, mode: str) -> None:
        """``caloforge-g4-fast`` only: ``"event"`` (default: the network runs at the end of each event) or
        ``"block"`` (once per :meth:`run` call, on the fast showers of all its events)."""
        if not self.fast:
            raise EngineError("set_fast_batch needs the fast-simulation build (fast_model=...)")
        if mode not in ("event", "block"):
            raise ValueError(f"fast batch mode must be event or block, not {mode!r}")
        try:
            self._proc.stdin.write(f"fast batch {mode}\n".encode())
            self._proc.stdin.flush()
        except (BrokenPipeError, OSError):
            self._fail("receiving a request")

    def _read(self, size: int, stage: str) -> bytes:
        out = bytearray()
        stream = self._proc.stdout
        while len(out) < size:
            chunk = stream.read(size - len(out))
            if not chunk:
                self._fail(stage)
            out += chunk
        return bytes(out)

    def _fail(self, stage: str) -> None:
        """Raise the one-line error of a Geant4 process that stopped answering."""
        try:
            code = self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            code = self._proc.wait()
        message = self.error_line()
        self.close()
        if message:  # the application's own diagnosis: bad input, an exception inside Geant4
            raise EngineError(f"Geant4 {stage} in {self.geometry.name!r}: {message}")
        raise Geant4Died(f"the Geant4 process for {self.geometry.name!r} stopped while {stage}: {describe_exit(code)}")

    def error_line(self) -> str:
        """The application's own ``error:`` line, if it wrote one."""
        try:
            self._log.flush()
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        for line in reversed(text.splitlines()):
            if line.startswith("error:"):
                return line[len("error:"):].strip()
        return ""

    # ----- lifetime ----------------------------------------------------------------------
    def close(self) -> None:
        """End the application (end of input, then a kill if it does not go) and remove its files."""
        proc = getattr(self, "_proc", None)
        if proc is not None and proc.poll() is None:
            try:
                proc.stdin.close()
            except OSError:
                pass
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for stream in (getattr(proc, "stdout", None), getattr(proc, "stdin", None)):
            try:
                if stream is not None:
                    stream.close()
            except OSError:
                pass
        if getattr(self, "_log", None) is not None and not self._log.closed:
            self._log.close()
        if getattr(self, "_dir", None) is not None:
            self._dir.cleanup()

    def __enter__(self) -> "Geant4Process":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass
