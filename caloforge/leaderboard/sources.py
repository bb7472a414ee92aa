"""Find a leaderboard's entries on disk: evaluation reports, training runs, bench JSON files.

A source is one of

* an evaluation report directory (``caloforge evaluate -o DIR``: ``DIR/metrics.json``) or its
  ``metrics.json``; when the directory sits in a training run (``RUN/report/``), the run is used too;
* a training run directory (``RUN/run.json``, ``RUN/best/``): its report is ``RUN/report/`` (or the
  one subdirectory holding a ``metrics.json``), its timings ``RUN/bench.json``;
* a bench JSON (``caloforge bench -o FILE``): paired with the run whose checkpoint it timed
  (its ``model.path``), which must be among the sources;
* a directory holding any of these one level down (``runs/`` with ``runs/A/``, ``runs/B/``, …).

The model family and parameter count come from the run's best checkpoint (else from the bench
JSON), the training cost from the checkpoint's ``training_cost``.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

from caloforge.errors import DataError
from caloforge.evaluate.result import etot_chi2_ndf
from caloforge.leaderboard.entry import Entry

__all__ = ["Source", "find_sources", "read_entry", "read_metrics", "read_bench", "timings"]

REPORT_NAMES = ("report", "evaluation", "eval")  # where a run's report is looked for first


@dataclass
class Source:
    """Where one model's numbers are: its report (required), run and bench JSON (optional)."""

    report: Path
    run: Path | None = None
    bench: Path | None = None


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{path}: not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: not a readable {what} ({type(exc).__name__})") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: not a {what} (expected a JSON object)")
    return data


def read_metrics(report: Path) -> dict[str, Any]:
    """``REPORT/metrics.json`` as written by ``caloforge evaluate``; one-line errors."""
    path = report / "metrics.json"
    if not path.is_file():
        raise DataError(f"{report}: no metrics.json (write one with caloforge evaluate ... -o {report})")
    metrics = _read_json(path, "metrics.json")
    if "geometry" not in metrics or etot_chi2_ndf(metrics) is None:
        raise DataError(f"{path}: not an evaluation report (no geometry or E_tot χ²/ndf)")
    return metrics


def read_bench(path: Path) -> dict[str, Any]:
    """A ``caloforge bench -o FILE`` report; one-line errors."""
    bench = _read_json(path, "bench JSON")
    if not isinstance(bench.get("results"), list) or not isinstance(bench.get("model"), dict):
        raise DataError(f"{path}: not a bench JSON (no results or model; write one with caloforge bench -o)")
    return bench


def _is_run(path: Path) -> bool:
    """A training run, or a model's directory laid out as one (``DIR/report/metrics.json``)."""
    return ((path / "run.json").is_file() or (path / "best" / "config.json").is_file()
            or any(_is_report(path / name) for name in REPORT_NAMES))


def _is_report(path: Path) -> bool:
    return (path / "metrics.json").is_file()


def _run_report(run: Path) -> Path:
    for name in REPORT_NAMES:
        if _is_report(run / name):
            return run / name
    found = sorted(p for p in run.iterdir() if p.is_dir() and _is_report(p))
    if len(found) == 1:
        return found[0]
    if found:
        raise DataError(f"{run}: several evaluation reports ({', '.join(p.name for p in found)}); give one")
    raise DataError(f"{run}: no metrics.json in the run (evaluate it: caloforge evaluate ... -o {run / 'report'})")


def _beside(*dirs: Path | None) -> Path | None:
    for d in dirs:
        if d is not None and (d / "bench.json").is_file():
            return d / "bench.json"
    return None


def _resolve(path: Path, loose_benches: list[Path], depth: int = 0) -> list[Source]:
    if not path.exists():
        raise DataError(f"{path}: no such file or directory")
    if path.is_file():
        if path.name == "metrics.json":
            return _resolve(path.parent, loose_benches, depth)
        if path.suffix == ".json":
            read_bench(path)
            loose_benches.append(path)
            return []
        raise DataError(f"{path}: not an evaluation report, a run directory or a bench JSON")
    if _is_report(path):
        run = path.parent if _is_run(path.parent) else None
        return [Source(path, run, _beside(run, path))]
    if _is_run(path):
        return [Source(_run_report(path), path, _beside(path))]
    if depth == 0:  # a directory of runs / reports / bench files
        found: list[Source] = []
        for child in sorted(path.iterdir()):
            if child.is_dir() and (_is_run(child) or _is_report(child)):
                found += _resolve(child, loose_benches, 1)
            elif child.is_file() and child.suffix == ".json":
                found += _resolve(child, loose_benches, 1)
        if found:
            return found
    raise DataError(f"{path}: no metrics.json (not an evaluation report, a run directory or a directory of them)")


def _checkpoint(model_path: str | Path) -> Path:
    """The run directory a bench's ``model.path`` belongs to (``RUN/best`` → ``RUN``)."""
    p = Path(model_path).resolve()
    return p.parent.parent if p.parent.name == "checkpoints" else (p.parent if p.name == "best" else p)


def find_sources(paths: Iterable[str | Path], benches: Mapping[str | Path, str | Path] | None = None) -> list[Source]:
    """Every model's :class:`Source` under ``paths``; ``benches`` pairs a source (as given in
    ``paths``) with a bench JSON explicitly, overriding any found beside it."""
    paths = [Path(p) for p in paths]
    loose: list[Path] = []
    per_path = {p: _resolve(p, loose) for p in paths}
    sources = [s for found in per_path.values() for s in found]
    for key, bench in (benches or {}).items():
        found = per_path.get(Path(key))
        if found is None:
            raise DataError(f"--bench {key}={bench}: {key} is not one of the sources given")
        if len(found) != 1:
            raise DataError(f"--bench {key}={bench}: {key} holds {len(found)} models; pair the bench with one of them")
        read_bench(Path(bench))
        found[0].bench = Path(bench)
    for bench in loose:  # a bench given alone: paired with the run whose checkpoint it timed
        model = read_bench(bench)["model"].get("path")
        run = _checkpoint(model) if model else None
        match = [s for s in sources if s.run is not None and s.run.resolve() == run]
        if not match:
            raise DataError(f"{bench}: timed {model}, which is none of the given runs; pair it with "
                            "--bench SOURCE=BENCH.json")
        match[0].bench = bench
    if not sources:
        raise DataError("no evaluation report among the sources: give report or run directories")
    return sources


def _safetensors_parameters(path: Path) -> int | None:
    """Parameter count from a safetensors header (the weights are not read)."""
    try:
        with open(path, "rb") as f:
            (size,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(size))
    except (OSError, struct.error, ValueError):
        return None
    total = 0
    for key, info in header.items():
        if key != "__metadata__":
            n = 1
            for d in info.get("shape", []):
                n *= int(d)
            total += n
    return total


def timings(bench: Mapping[str, Any], device: str = "cpu") -> tuple[float | None, float | None, str | None]:
    """(ms/shower at batch 1, at batch 10 000, which path) of a bench report: the fastest path
    timed on ``device`` (``cpu``, or ``gpu`` for the CUDA rows) at each batch size.

    >>> timings({"results": [{"path": "pytorch", "device": "cpu", "threads": 1, "batch": 1, "ms_per_shower": 2.0},
    ...                      {"path": "onnxruntime", "device": "cpu", "threads": 1, "batch": 1, "ms_per_shower": 1.0},
    ...                      {"path": "pytorch", "device": "cpu", "threads": 1, "batch": 10000, "ms_per_shower": 0.1}]})
    (1.0, 0.1, 'pytorch, cpu, 1 thread(s)')
    """
    want = "cuda" if device == "gpu" else "cpu"
    rows = [r for r in bench.get("results", []) if r.get("device") == want and r.get("ms_per_shower") is not None]

    def best(batch: int) -> dict[str, Any] | None:
        at = [r for r in rows if int(r.get("batch", -1)) == batch]
        return min(at, key=lambda r: float(r["ms_per_shower"])) if at else None

    b1, b10k = best(1), best(10_000)
    label_row = b10k or b1
    label = None
    if label_row is not None:
        label = f"{label_row['path']}, {device}" + (f", {label_row.get('threads')} thread(s)" if want == "cpu" else "")
    return (None if b1 is None else float(b1["ms_per_shower"]), None if b10k is None else float(b10k["ms_per_shower"]),
            label)


def _first(*values: Any) -> Any:
    return next((v for v in values if v is not None), None)


def _name(source: Source) -> str:
    if source.run is not None:
        return source.run.name
    return source.report.parent.name if source.report.name in REPORT_NAMES else source.report.name


def read_entry(source: Source, timing: str = "cpu") -> Entry:
    """One model's :class:`~caloforge.leaderboard.entry.Entry` from its report, run and bench."""
    m = read_metrics(source.report)
    head = m.get("headline") or {}
    clf = m.get("classifier") or {}
    fpd, kpd = m.get("fpd") or {}, m.get("kpd") or {}
    entry = Entry(
        name=_name(source), report=source.report, run=source.run, bench=source.bench,
        auc_low=_first(head.get("auc_low"), (clf.get("low") or {}).get("auc")),
        auc_high=_first(head.get("auc_high"), (clf.get("high") or {}).get("auc")),
        fpd_x1e3=_first(head.get("fpd_x1e3"), fpd.get("value_x1e3"),
                        None if fpd.get("value") is None else 1e3 * fpd["value"]),
        kpd_x1e3=_first(head.get("kpd_x1e3"), kpd.get("value_x1e3"),
                        None if kpd.get("value") is None else 1e3 * kpd["value"]),
        etot_chi2_ndf=etot_chi2_ndf(m), geometry=m.get("geometry"), reference=m.get("reference_file"),
        protocol=_first((m.get("protocol") or {}).get("name"), head.get("protocol")))
    if source.run is not None and (source.run / "best" / "config.json").is_file():
        best = source.run / "best"
        meta = _read_json(best / "config.json", "checkpoint config.json")
        entry.family = meta.get("family")
        entry.parameters = _safetensors_parameters(best / "model.safetensors")
        cost = meta.get("training_cost") or {}
        if cost.get("wall_s") is not None:  # minutes of the device, summed over processes
            entry.training_minutes = float(cost["wall_s"]) * int(cost.get("processes") or 1) / 60.0
            entry.training_device = cost.get("device")
    if source.bench is not None:
        bench = read_bench(source.bench)
        model = bench["model"]
        entry.family = entry.family or model.get("family")
        entry.parameters = entry.parameters or model.get("parameters")
        entry.ms_per_shower_b1, entry.ms_per_shower_b10000, entry.timing = timings(bench, timing)
    return entry
