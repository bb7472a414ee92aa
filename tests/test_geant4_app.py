"""The Geant4 application ``caloforge-g4`` run directly through its stdin/stdout protocol, on small
hand-written descriptions: ready record, physical energies, readout binning, determinism, error
handling and process hygiene.

Skipped where Geant4 cannot be built (no compiler, no calzone wheel or headers), unless
CALOFORGE_REQUIRE_GEANT4=1, where that is an error.  The build is cached (a few seconds the first time).
"""

from __future__ import annotations

import signal
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from caloforge.geant4.build import ensure_built, require_geant4

_MISSING = require_geant4()
pytestmark = pytest.mark.skipif(_MISSING is not None, reason=f"Geant4 unavailable: {_MISSING}")

MAGIC, DONE, VERSION = 0x34474643, 0x454E4F44, 1
EDGES = (0.0, 5.0, 10.0, 20.0, 50.0, 100.0)


@pytest.fixture(scope="session")
def app():
    return ensure_built()


def describe(path: Path, *, n_layers=10, repeats=5, slabs=(("G4_Pb", 2.0, 0), ("G4_lAr", 5.0, 1)),
             readout=f"polar {len(EDGES) - 1} 4 " + " ".join(map(repr, EDGES)), frame="detector",
             half_width=1000.0, upstream=(), gap=0.0) -> Path:
    """A description file (docs/geant4.md, "The application"): n_layers × repeats × slabs, back to back from z = 0."""
    cell = sum(t for _, t, _ in slabs)
    lines = ["caloforge-geant4 1", "name test", f"frame {frame}", f"half_width {half_width!r}", "cut 0.7",
             f"upstream {len(upstream)}", *(f"slab {m} {t!r} {a}" for m, t, a in upstream), f"layers {n_layers}"]
    for i in range(n_layers):
        lines.append(f"layer {i * (repeats * cell + gap)!r} {repeats * cell!r} {repeats} {len(slabs)} {readout}")
        lines += [f"slab {m} {t!r} {a}" for m, t, a in slabs]
    path.write_text("\n".join(lines + ["end"]) + "\n")
    return path


def events(particle: str, rows) -> str:
    """A request block; rows are (seed, E_MeV[, x, y, z, dx, dy, dz])."""
    out = [f"block {len(rows)} {particle}"]
    for row in rows:
        seed, energy, *rest = row
        x, y, z, dx, dy, dz = rest or (0.0, 0.0, -10.0, 0.0, 0.0, 1.0)
        out.append(f"{seed} {energy!r} {x!r} {y!r} {z!r} {dx!r} {dy!r} {dz!r}")
    return "\n".join(out) + "\n"


def run(app, description: Path, requests: str = "", timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([str(app.executable), str(description)], input=requests.encode(), capture_output=True,
                          env=app.environ(), timeout=timeout)


def parse(stdout: bytes, counts):
    """(n_voxels, n_layers, blocks) from the output of blocks of `counts` events; each block is a list of
    records (cpu, active, passive, voxels, raw bytes)."""
    magic, n_voxels, n_layers, version = struct.unpack_from("<4I", stdout)
    assert (magic, version) == (MAGIC, VERSION)
    size = 8 + 16 * n_layers + 4 * n_voxels
    blocks, at = [], 16
    for count in counts:
        block = []
        for _ in range(count):
            head = np.frombuffer(stdout, dtype="<f8", count=1 + 2 * n_layers, offset=at)
            voxels = np.frombuffer(stdout, dtype="<f4", count=n_voxels, offset=at + 8 * (1 + 2 * n_layers))
            block.append((head[0], head[1:1 + n_layers], head[1 + n_layers:], voxels, stdout[at:at + size]))
            at += size
        assert struct.unpack_from("<I", stdout, at)[0] == DONE
        blocks.append(block)
        at += 4
    assert at == len(stdout), "bytes after the last block"
    return n_voxels, n_layers, blocks


def single_block(app, description: Path, requests: str):
    done = run(app, description, requests)
    assert done.returncode == 0, done.stderr.decode()
    assert done.stderr == b"", done.stderr.decode()  # the app prints nothing but errors
    n_voxels, n_layers, blocks = parse(done.stdout, [requests.count("\n") - 1])
    return n_voxels, n_layers, blocks[0]


def test_ready_record_and_physical_energies(app, tmp_path):
    """1 GeV e- in 50 × (2 mm Pb + 5 mm LAr) ≈ 19.6 X0: sampling fraction ≈ 0.22, little leakage."""
    n_voxels, n_layers, records = single_block(app, describe(tmp_path / "d.txt"),
                                               events("e-", [(s, 1000.0) for s in range(1, 21)]))
    assert (n_voxels, n_layers, len(records)) == (10 * 4 * 5, 10, 20)
    fractions, profile = [], 0
    for cpu, active, passive, voxels, _ in records:
        assert 0 < cpu < 5 and np.all(active >= 0) and np.all(passive >= 0) and np.all(voxels >= 0)
        total = active.sum() + passive.sum()
        assert 0.85 * 1000 < total <= 1000 * (1 + 1e-9)
        fractions.append(active.sum() / 1000)
        profile = profile + active
        # detector frame: the voxels of a layer hold the part of its active energy inside r < 100 mm
        per_layer = voxels.reshape(n_layers, -1).sum(axis=1)
        assert np.all(per_layer <= active * (1 + 1e-5) + 1e-6)
        assert per_layer.sum() > 0.9 * active.sum()
    assert 0.15 < min(fractions) and max(fractions) < 0.30
    assert 0.19 < np.mean(fractions) < 0.25
    # shower maximum near ln(E/Ec) ≈ 4-5 X0, i.e. in layer 1 or 2 of about 2 X0 each; little at the back
    assert np.argmax(profile) in (1, 2) and profile[-1] < 0.01 * profile.sum()


def test_cartesian_readout_covering_the_slabs_holds_all_active_energy(app, tmp_path):
    """A 4 × 4 grid of 50 mm cells covers ±100 mm, the whole slab: voxel sums equal the active energy."""
    d = describe(tmp_path / "d.txt", half_width=100.0, readout="cartesian 4 4 50.0 50.0")
    n_voxels, n_layers, records = single_block(app, d, events("gamma", [(7, 2000.0), (8, 500.0, 3.0, -2.0, -5,
                                                                                           0.0, 0.0, 1.0)]))
    assert n_voxels == 10 * 16
    for _, active, _, voxels, _ in records:
        np.testing.assert_allclose(voxels.reshape(n_layers, 16).sum(axis=1), active, rtol=1e-5, atol=1e-6)
        image = voxels.reshape(n_layers, 4, 4).sum(axis=0)  # row-major (ny, nx) centred on the axis
        assert image[1:3, 1:3].sum() > 0.8 * image.sum()


def test_particle_frame_reduces_to_the_detector_frame_at_normal_incidence(app, tmp_path):
    rows = [(11, 1000.0), (12, 3000.0)]
    *_, detector = single_block(app, describe(tmp_path / "a.txt"), events("e-", rows))
    *_, particle = single_block(app, describe(tmp_path / "b.txt", frame="particle"), events("e-", rows))
    for a, b in zip(detector, particle):
        assert a[4][8:] == b[4][8:]
    # a tilted shower: cells follow its axis, so the cells still hold most of the active energy
    tilted = [(13, 2000.0, -30.0, 0.0, -10.0, 0.2, 0.0, 0.98)]
    *_, (rec,) = single_block(app, describe(tmp_path / "c.txt", frame="particle"), events("e-", tilted))
    _, active, _, voxels, _ = rec
    assert 0.8 * active.sum() < voxels.sum() <= active.sum() * (1 + 1e-5)


def test_same_seed_same_bytes_whatever_ran_before(app, tmp_path):
    d = describe(tmp_path / "d.txt", upstream=(("G4_Al", 5.0, 0),))
    first = single_block(app, d, events("e-", [(42, 2000.0), (43, 5000.0), (42, 2000.0)]))[2]
    again = single_block(app, d, events("e-", [(42, 2000.0)]))[2]
    strip = [rec[4][8:] for rec in first + again]  # all but the cpu time
    assert strip[0] == strip[2] == strip[3] != strip[1]
    # several blocks in one process, and a block of no events
    done = run(app, d, events("gamma", [(5, 1000.0)]) + "block 0 e+\n" + events("e-", [(42, 2000.0)]) + "quit\n")
    assert done.returncode == 0
    _, _, blocks = parse(done.stdout, [1, 0, 1])
    assert blocks[2][0][4][8:] == strip[0]


def test_zero_thickness_placeholder_layer(app, tmp_path):
    """description.py writes a layer without material as "layer <z> 0.0 0 0 none": it keeps its index."""
    lines = describe(tmp_path / "d.txt", n_layers=2, repeats=5).read_text().splitlines()
    at = lines.index("layers 2")
    lines[at] = "layers 3"
    back = lines.index("end")
    lines[back:back] = ["layer 70.0 0.0 0 0 none"]
    path = tmp_path / "p.txt"
    path.write_text("\n".join(lines) + "\n")
    n_voxels, n_layers, (rec,) = single_block(app, path, events("e-", [(3, 1000.0)]))
    assert (n_voxels, n_layers) == (2 * 20, 3)
    assert rec[1][2] == rec[2][2] == 0 and rec[1][:2].sum() > 0


def test_end_of_input_and_quit_exit_cleanly(app, tmp_path):
    d = describe(tmp_path / "d.txt", n_layers=2, repeats=1)
    for requests in ("", "quit\n"):
        done = run(app, d, requests)
        assert (done.returncode, done.stderr, len(done.stdout)) == (0, b"", 16)


def _one_error_line(done: subprocess.CompletedProcess, *words: str) -> str:
    assert done.returncode == 2
    lines = done.stderr.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    for word in words:
        assert word in lines[0]
    return lines[0]


def test_bad_descriptions_fail_with_one_line(app, tmp_path):
    bad = describe(tmp_path / "m.txt", slabs=(("G4_Pb", 2.0, 0), ("G4_Foo", 5.0, 1)))
    done = run(app, bad, events("e-", [(1, 1000.0)]))
    _one_error_line(done, "unknown material G4_Foo", "layer 0")
    assert done.stdout == b""
    good = describe(tmp_path / "g.txt").read_text()
    for broken, words in ((good.replace("layers 10", "layers x"), ["line 7"]),
                          (good.replace("end\n", ""), ["ends early"]),
                          (good.replace("layer 0.0 35.0 5", "layer 0.0 36.0 5"), ["thickness"]),
                          (good.replace("caloforge-geant4 1", "caloforge-geant4 9"), ["version"])):
        path = tmp_path / "broken.txt"
        path.write_text(broken)
        _one_error_line(run(app, path, ""), *words)
    _one_error_line(run(app, tmp_path / "missing.txt", ""), "cannot read")


def test_bad_requests_fail_with_one_line(app, tmp_path):
    d = describe(tmp_path / "d.txt", n_layers=2, repeats=1)
    for requests, words in (("block 1 e-\n1 1000 0 0\n", ["8 values"]),
                            ("block 1 e-\n", ["ends inside a block"]),
                            ("block 1 tachyon\n1 1000 0 0 -10 0 0 1\n", ["tachyon"]),
                            ("block 1 e-\n1 -5 0 0 -10 0 0 1\n", ["energy"]),
                            ("block 1 e-\n-1 1000 0 0 -10 0 0 1\n", ["seed"]),
                            ("block 1 e-\n1 1000 0 0 -1e7 0 0 1\n", ["outside the world"]),
                            ("shower\n", ["request"])):
        done = run(app, d, requests)
        _one_error_line(done, *words)
        assert done.stdout[:4] == struct.pack("<I", MAGIC)  # the ready record came first
    if app.info.get("physics") == "data-free-em":  # hadrons need the full physics list
        for particle in ("pi+", "proton"):
            _one_error_line(run(app, d, f"block 1 {particle}\n1 1000 0 0 -10 0 0 1\n"), particle, "data-free-em")


def test_dies_with_its_parent(app, tmp_path):
    """PR_SET_PDEATHSIG: a parent killed with SIGKILL (no cleanup) leaves no caloforge-g4 behind."""
    d = describe(tmp_path / "d.txt", n_layers=2, repeats=1)
    parent = textwrap.dedent(f"""
        import subprocess, sys
        p = subprocess.Popen([{str(app.executable)!r}, {str(d)!r}], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, env={app.environ()!r})
        assert len(p.stdout.read(16)) == 16  # initialised: prctl has run
        print(p.pid, flush=True)
        sys.stdin.read()  # wait to be killed
    """)
    proc = subprocess.Popen([sys.executable, "-c", parent], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        pid = int(proc.stdout.readline())
        assert _alive(pid)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        deadline = time.monotonic() + 10
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(pid), "caloforge-g4 outlived its parent"
    finally:
        if proc.poll() is None:
            proc.kill()


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")  # a zombie waiting for init to reap it is gone
