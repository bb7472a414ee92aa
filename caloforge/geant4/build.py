"""Find Geant4 and build the ``caloforge-g4`` application (sources in ``app/``), cached by content.

Two kinds of Geant4 are recognised, in this order:

* a full installation with ``geant4-config`` (``$GEANT4_CONFIG``, ``$Geant4_DIR/../../../bin/geant4-config``
  or ``PATH``): its own flags and libraries, physics list FTFP_BERT, its data sets as its environment says;
* the Geant4 11.4.0 libraries bundled in the ``calzone==1.2.2`` wheel, with the matching headers from
  ``$CALOFORGE_GEANT4_INCLUDE`` (default ``<repo>/../shared/geant4/include``): no data sets, so the
  application is compiled with its data-free electromagnetic list (``-DCALOFORGE_G4_DATA_FREE``), the old
  libstdc++ string ABI of those libraries, and an rpath to ``calzone.libs``.

The executable lives in ``$CALOFORGE_CACHE_DIR`` (default ``~/.cache/caloforge``) under
``geant4/<key>/caloforge-g4``, where ``key`` hashes the sources, the compiler, the Geant4 libraries and
the flags: a changed source or a different Geant4 builds anew, anything else is reused.  Nothing here
imports more than the standard library, so ``geant4_available()`` is cheap.
"""

from __future__ import annotations

import datetime
import fcntl
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from caloforge.errors import EngineError

APP_DIR = Path(__file__).resolve().parent / "app"
INFERENCE_DIR = Path(__file__).resolve().parent / "inference"
EXECUTABLE = "caloforge-g4"
FAST_EXECUTABLE = "caloforge-g4-fast"
INFERENCE_LIBRARY = "libcaloforge_inference.so"
FAST_LAYOUT = 2  # how the fast build is put together (below): a change builds anew
# what the fast-simulation build needs besides CALZONE_LIBRARIES (G4VFastSimulationModel, G4FastSimulationPhysics)
CALZONE_FAST_LIBRARIES = ("G4parmodels", "G4physicslists")
CALZONE_VERSION = "1.2.2"
# calzone.libs carries hashed file names (libG4run-<hash>.so): found by these stems
CALZONE_LIBRARIES = ("G4run", "G4event", "G4tracking", "G4track", "G4processes_core", "G4particles",
                     "G4materials", "G4geometry", "G4digits_hits", "G4intercoms", "G4global", "G4clhep",
                     "G4graphics_reps", "G4ptl", "G4zlib")
NO_COMPILER = "no C++ compiler (g++) found: install one, e.g. apt-get install g++"
NO_GEANT4 = "Geant4 not found: pip install 'caloforge[geant4]' (calzone==1.2.2) or put geant4-config on PATH"
REQUIRE_ENV = "CALOFORGE_REQUIRE_GEANT4"


@dataclass(frozen=True)
class Geant4Install:
    """Where Geant4 comes from and how to compile and link against it."""

    kind: str  # "geant4-config" | "calzone"
    version: str  # e.g. "11.4.0"
    source: str  # "calzone-1.2.2" | the geant4-config prefix
    physics: str  # "data-free-em" | "FTFP_BERT"
    cflags: tuple[str, ...]
    link: tuple[str, ...]  # linker arguments: libraries, rpaths
    libraries: tuple[Path, ...] = ()  # the library files, for the cache key
    ensdfstate: bool = False  # needs G4ENSDFSTATEDATA pointed at an empty nuclide table
    fast_link: tuple[str, ...] = ()  # more libraries for the fast-simulation build

    def identity(self) -> str:
        """Version, library paths and sizes: a replaced Geant4 gets a new cache key."""
        parts = [self.kind, self.version, self.source]
        for lib in self.libraries:
            try:
                parts.append(f"{lib}:{lib.stat().st_size}")
            except OSError:
                parts.append(f"{lib}:?")
        return "\n".join(parts)


@dataclass(frozen=True)
class Build:
    """A built ``caloforge-g4``; ``info`` is its ``build.json``."""

    executable: Path
    info: dict = field(default_factory=dict)

    def environ(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """The environment to run the executable in: ``base`` (default ``os.environ``) plus, for the calzone
        libraries, ``G4ENSDFSTATEDATA`` at an empty nuclide table unless it is already set."""
        env = dict(os.environ if base is None else base)
        if self.info.get("ensdfstate") and not env.get("G4ENSDFSTATEDATA"):
            env["G4ENSDFSTATEDATA"] = self.info["ensdfstate"]
        return env


def cache_dir() -> Path:
    return Path(os.environ.get("CALOFORGE_CACHE_DIR") or Path.home() / ".cache" / "caloforge").expanduser()


def _compiler() -> list[str]:
    cxx = os.environ.get("CXX")
    if cxx:
        cmd = shlex.split(cxx)
        if cmd and shutil.which(cmd[0]):
            return cmd
        raise EngineError(f"the C++ compiler CXX={cxx!r} was not found")
    for name in ("g++", "c++"):
        if path := shutil.which(name):
            return [path]
    raise EngineError(NO_COMPILER)


def _run(cmd: list[str]) -> str:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise EngineError(f"{' '.join(cmd)} failed: {exc}") from None
    if done.returncode:
        line = (done.stderr.strip() or done.stdout.strip()).splitlines()[:1]
        raise EngineError(f"{' '.join(cmd)} failed (exit {done.returncode}){': ' + line[0] if line else ''}")
    return done.stdout.strip()


def _geant4_config_path() -> str | None:
    if explicit := os.environ.get("GEANT4_CONFIG"):
        if not (os.path.isfile(explicit) and os.access(explicit, os.X_OK)):
            raise EngineError(f"GEANT4_CONFIG={explicit} is not an executable geant4-config")
        return explicit
    if g4dir := os.environ.get("Geant4_DIR"):  # <prefix>/lib/cmake/Geant4 (CMake's convention)
        candidate = Path(g4dir).expanduser() / ".." / ".." / ".." / "bin" / "geant4-config"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate.resolve())
    return shutil.which("geant4-config")


def _from_geant4_config(config: str) -> Geant4Install:
    version = _run([config, "--version"])
    prefix = _run([config, "--prefix"])
    cflags = tuple(shlex.split(_run([config, "--cflags"])))
    libs = shlex.split(_run([config, "--libs"]))
    lib_dirs = [a[2:] for a in libs if a.startswith("-L") and len(a) > 2]
    names = [a[2:] for a in libs if a.startswith("-l")]
    files = tuple(Path(d) / f"lib{n}.so" for d in lib_dirs for n in names if (Path(d) / f"lib{n}.so").exists())
    rpaths = tuple(f"-Wl,-rpath,{d}" for d in lib_dirs)  # runs without LD_LIBRARY_PATH
    return Geant4Install("geant4-config", version, prefix, "FTFP_BERT", cflags, tuple(libs) + rpaths, files)


def _default_include() -> Path:
    repo = Path(__file__).resolve().parents[2]  # parent of the caloforge package directory
    return repo.parent / "shared" / "geant4" / "include"


def _from_calzone() -> Geant4Install:
    spec = importlib.util.find_spec("calzone")  # locates the wheel without importing it
    if spec is None or not spec.origin:
        raise EngineError(NO_GEANT4)
    version = importlib.metadata.version("calzone")
    if version != CALZONE_VERSION:
        raise EngineError(f"calzone {version} is installed, but caloforge builds against the Geant4 of "
                          f"calzone=={CALZONE_VERSION}: pip install calzone=={CALZONE_VERSION}")
    libdir = Path(spec.origin).resolve().parent.parent / "calzone.libs"
    libraries = []
    fast = []
    for stem in CALZONE_FAST_LIBRARIES:
        found = sorted(libdir.glob(f"lib{stem}-*.so*"))
        if found:
            fast.append(str(found[0]))
    for stem in CALZONE_LIBRARIES:
        found = sorted(libdir.glob(f"lib{stem}-*.so*"))
        if not found:
            raise EngineError(f"lib{stem}-*.so not found in {libdir}: reinstall calzone=={CALZONE_VERSION}")
        libraries.append(found[0])
    include = Path(os.environ.get("CALOFORGE_GEANT4_INCLUDE") or _default_include()).expanduser()
    header = include / "G4Version.hh"
    if not header.is_file():
        raise EngineError(f"Geant4 headers not found at {include} (calzone ships only the libraries): set "
                          "CALOFORGE_GEANT4_INCLUDE to the include directory of Geant4 11.4.0")
    match = re.search(r"#define\s+G4VERSION_NUMBER\s+(\d+)", header.read_text(errors="replace"))
    number = int(match.group(1)) if match else 0
    g4version = f"{number // 100}.{number // 10 % 10}.{number % 10}" if number else "unknown"
    # the bundled libraries: old string ABI, sequential (no G4MULTITHREADED)
    cflags = ("-D_GLIBCXX_USE_CXX11_ABI=0", "-DCALOFORGE_G4_DATA_FREE", "-I", str(include))
    # RPATH rather than RUNPATH (--disable-new-dtags): it also serves the libraries' own dependencies
    link = tuple(str(p) for p in libraries) + (f"-Wl,--disable-new-dtags,-rpath,{libdir}", "-lpthread")
    return Geant4Install("calzone", g4version, f"calzone-{version}", "data-free-em", cflags, link,
                         tuple(libraries), ensdfstate=True, fast_link=tuple(fast))


def find_geant4() -> Geant4Install:
    """The Geant4 to build against (geant4-config first, then the calzone wheel), or EngineError."""
    config = _geant4_config_path()
    return _from_geant4_config(config) if config else _from_calzone()


def geant4_available() -> bool:
    """True when a C++ compiler and Geant4 are found (nothing is compiled)."""
    try:
        _compiler()
        find_geant4()
    except EngineError:
        return False
    return True


def require_geant4() -> str | None:
    """None when Geant4 can be built here; otherwise the reason, for a test to skip with, unless
    ``CALOFORGE_REQUIRE_GEANT4=1``: then the missing Geant4 is an error (EngineError)."""
    try:
        _compiler()
        find_geant4()
    except EngineError as exc:
        if os.environ.get(REQUIRE_ENV) == "1":
            raise EngineError(f"{exc} ({REQUIRE_ENV}=1)") from None
        return str(exc)
    return None


def _sources() -> list[Path]:
    sources = sorted(p for p in APP_DIR.iterdir() if p.suffix in (".cc", ".hh"))
    if not any(p.suffix == ".cc" for p in sources):
        raise EngineError(f"no Geant4 application sources in {APP_DIR}")
    return sources


def _ensdfstate(root: Path) -> Path:
    """An empty nuclide table: the Geant4 kernel insists on reading one, and nothing here needs ions."""
    directory = root / "ensdfstate"
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "ENSDFSTATE.dat").touch()
    return directory


def _torch() -> tuple[str, Path, list[str], list[str]]:
    """(version, lib dir, compile flags, link arguments) of the torch wheel's LibTorch, or EngineError."""
    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.origin:
        raise EngineError("the fast-simulation build needs LibTorch: pip install torch")
    root = Path(spec.origin).resolve().parent
    include, lib = root / "include", root / "lib"
    if not (include / "torch" / "script.h").is_file():
        raise EngineError(f"the torch wheel at {root} has no LibTorch headers (include/torch/script.h)")
    version = importlib.metadata.version("torch")
    abi = "1"
    try:  # the wheel's string ABI, without importing torch (slow): its CMake config says it
        text = (root / "share" / "cmake" / "Caffe2" / "Caffe2Config.cmake").read_text(errors="replace")
        match = re.search(r"_GLIBCXX_USE_CXX11_ABI=(\d)", text)
        abi = match.group(1) if match else abi
    except OSError:
        pass
    cflags = ["-std=c++17", "-O2", "-fPIC", "-Wno-c++20-extensions", f"-D_GLIBCXX_USE_CXX11_ABI={abi}", "-isystem",
              str(include), "-isystem", str(include / "torch" / "csrc" / "api" / "include")]
    link = [f"-L{lib}", "-ltorch", "-ltorch_cpu", "-lc10", f"-Wl,-rpath,{lib}"]
    return version, lib, cflags, link


def ensure_built(rebuild: bool = False, progress: bool = False, fast: bool = False) -> Build:
    """The ``caloforge-g4`` executable for this Geant4, compiled on first use (a few seconds);
    ``fast``: ``caloforge-g4-fast``, the same application with caloforge's fast-simulation model
    and its LibTorch inference unit (compiled apart, new string ABI; a minute the first time)."""
    cxx = _compiler()
    install = find_geant4()
    compiler_id = _run([*cxx, "--version"]).splitlines()[0]
    # -O2: -O3 buys nothing measurable, the time goes into the Geant4 libraries
    flags = ["-std=c++17", "-O2", "-I", str(APP_DIR), *install.cflags]
    link = list(install.link)
    sources = _sources()
    inference: list[Path] = []
    torch_flags: list[str] = []
    torch_link: list[str] = []
    name = EXECUTABLE
    extra_ident = ""
    if fast:
        torch_version, _, torch_flags, torch_link = _torch()
        flags += ["-DCALOFORGE_G4_FAST", "-I", str(INFERENCE_DIR)]
        link = list(install.fast_link) + link
        inference = sorted(INFERENCE_DIR.glob("*.cc")) + sorted(INFERENCE_DIR.glob("*.h"))
        name = FAST_EXECUTABLE
        extra_ident = f"fast build {FAST_LAYOUT}\0torch {torch_version}\0" + "\0".join(torch_flags)
    digest = hashlib.sha256()
    for part in (compiler_id, install.identity(), "\0".join(flags), "\0".join(link), extra_ident):
        digest.update(part.encode() + b"\0")
    for path in sources + inference:
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    key = digest.hexdigest()[:16]

    root = cache_dir()
    builds = root / "geant4"
    target = builds / key
    executable = target / name
    ensdfstate = _ensdfstate(root) if install.ensdfstate else None
    try:
        builds.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EngineError(f"cannot create the build cache {builds}: {exc.strerror}") from None

    # Parallel callers (pytest-xdist workers) wait for one compiler instead of running two; the
    # temp-dir-and-rename keeps the cache consistent even where the lock does not hold (NFS).
    with open(builds / f".{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if executable.is_file() and not rebuild:
            return Build(executable, _load_info(target, ensdfstate))
        started = time.monotonic()
        if progress:
            print(f"building {name} against Geant4 {install.version} ({install.physics}) ...",
                  file=sys.stderr, flush=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=builds))
        try:
            # one translation unit: the Geant4 headers are parsed once (the whole build is a few seconds)
            unity = tmp / "caloforge-g4-all.cc"
            unity.write_text("".join(f'#include "{p}"\n' for p in sources if p.suffix == ".cc"))
            log = tmp / "build.log"
            cmds = []
            objects = []
            units = [str(p) for p in inference if p.suffix == ".cc"]
            if units:
                # LibTorch's ABI, in a shared library of its own that exports only the cf_* functions:
                # linked into the executable, the unit's template instances (std::unordered_map<std::string, ...>)
                # would be exported from there and interpose LibTorch's own copies (a crash in torch::jit::load)
                script = tmp / "inference.map"
                script.write_text("{ global: cf_*; local: *; };\n")
                lib = tmp / INFERENCE_LIBRARY
                cmds.append([*cxx, *torch_flags, "-shared", "-I", str(INFERENCE_DIR), *units, "-o", str(lib),
                             f"-Wl,-soname,{INFERENCE_LIBRARY}", f"-Wl,--version-script={script}", *torch_link])
                objects = ["-ldl"]  # dlopen()ed next to the executable (FastShowerModel.cc says why)
            cmds.append([*cxx, *flags, "-o", str(tmp / name), str(unity), *objects, *link])
            with open(log, "w") as out:
                for cmd in cmds:
                    out.write(shlex.join(cmd) + "\n")
                    out.flush()
                    done = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT)
                    if done.returncode:
                        break
            if done.returncode:
                kept = builds / f"{key}-failed.log"
                shutil.copyfile(log, kept)
                lines = [ln for ln in log.read_text(errors="replace").splitlines() if not ln.startswith(cxx[0])]
                first = next((ln for ln in lines if "error" in ln), lines[0] if lines else "no output")
                raise EngineError(f"compiling {name} failed: {first.strip()} (log: {kept})")
            info = {
                "geant4_version": install.version,
                "physics": install.physics,
                "source": install.source,
                "flags": flags,
                "link": link,
                "fast": bool(fast),
                "compiler": compiler_id,
                "key": key,
                "build_seconds": round(time.monotonic() - started, 2),
                "built": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            }
            (tmp / "build.json").write_text(json.dumps(info, indent=1) + "\n")
            if rebuild and target.exists():
                old = builds / f".{key}-old-{os.getpid()}"
                os.rename(target, old)
                shutil.rmtree(old, ignore_errors=True)
            try:
                os.rename(tmp, target)  # atomic: readers see no half-written executable
            except OSError:
                if not executable.is_file():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        if progress:
            print(f"built {executable} in {time.monotonic() - started:.1f} s", file=sys.stderr, flush=True)
        return Build(executable, _load_info(target, ensdfstate))


def _load_info(target: Path, ensdfstate: Path | None) -> dict:
    try:
        info = json.loads((target / "build.json").read_text())
    except (OSError, ValueError):
        info = {}
    info["ensdfstate"] = str(ensdfstate) if ensdfstate else None
    return info
