"""Assemble a leaderboard: read the entries, check they share one reference file and one dataset,
mark the Pareto fronts, add the published rows of the dataset and write the four files."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from caloforge.errors import ConfigError, DataError
from caloforge.evaluate.identity import describe_reference, same_reference, sample_identity
from caloforge.leaderboard.entry import Entry
from caloforge.leaderboard.pareto import pareto_mask
from caloforge.leaderboard.published import DATASETS, published_entries
from caloforge.leaderboard.sources import find_sources, read_entry

__all__ = ["Leaderboard", "build_leaderboard", "TIMINGS"]

TIMINGS = ("cpu", "gpu")


@dataclass
class Leaderboard:
    """What :func:`build_leaderboard` compared and wrote."""

    entries: list[Entry]  # caloforge's, Pareto-optimal first
    published: list[Entry]  # the CaloChallenge 2022 rows of ``dataset`` (empty for other geometries)
    geometry: str
    dataset: str | None  # a key of published.DATASETS, or None
    dataset_origin: str  # "--dataset" or "the reports' geometry"
    reference: dict[str, Any]
    timing: str
    warnings: list[str] = field(default_factory=list)  # entries left out (skip_mismatched)
    files: dict[str, Path] = field(default_factory=dict)  # "csv", "md", "png", "html" → path

    @property
    def reference_label(self) -> str:
        return describe_reference(self.reference)


def _metrics_path(e: Entry) -> str:
    return str(e.report / "metrics.json") if e.report is not None else e.name


def _check_reference(entries: list[Entry], reference: str | Path | None, skip: bool,
                     warnings: list[str]) -> tuple[list[Entry], dict[str, Any]]:
    """Keep the entries evaluated against the target reference: ``reference``'s identity, else the
    first recorded one; the others are refused (one line) or, with ``skip``, left out with a warning."""
    if reference is not None:
        if not Path(reference).is_file():
            raise DataError(f"{reference}: reference file not found")
        target = sample_identity(reference)
    else:
        target = next((e.reference for e in entries if e.reference), None) or {}
    kept = []
    for e in entries:
        if not e.reference:
            why = "records no reference file (evaluated by an older caloforge); evaluate it again"
        elif not same_reference(e.reference, target):
            why = (f"evaluated against {describe_reference(e.reference)}, not {describe_reference(target)}")
        else:
            kept.append(e)
            continue
        if not skip:
            raise DataError(f"{_metrics_path(e)}: {why}; every entry must share one reference file "
                            "(--skip-mismatched leaves such entries out)")
        warnings.append(f"{e.name}: {why}")
    if not kept:
        raise DataError("no entry is left: none was evaluated against the reference file")
    return kept, target


def _dataset(entries: list[Entry], dataset: str | None) -> tuple[str, str | None, str]:
    geometries = sorted({str(e.geometry) for e in entries})
    if len(geometries) > 1:
        raise DataError(f"the reports are on different geometries ({', '.join(geometries)}); give one geometry")
    geometry = geometries[0]
    if dataset is not None:
        if dataset not in DATASETS:
            raise ConfigError(f"--dataset {dataset!r}: expected one of {', '.join(DATASETS)}")
        if geometry != dataset:
            raise DataError(f"{_metrics_path(entries[0])}: evaluated on {geometry}, not --dataset {dataset}")
        return geometry, dataset, "--dataset"
    return geometry, (geometry if geometry in DATASETS else None), "the reports' geometry"


def _mark_pareto(entries: list[Entry]) -> None:
    for attr, flag in (("auc_low", "pareto_auc"), ("fpd_x1e3", "pareto_fpd")):
        for e, on in zip(entries, pareto_mask([(e.ms_per_shower_b10000, getattr(e, attr)) for e in entries])):
            setattr(e, flag, on)


def build_leaderboard(sources: Iterable[str | Path], output: str | Path | None, *, dataset: str | None = None,
                      benches: Mapping[str | Path, str | Path] | None = None, reference: str | Path | None = None,
                      skip_mismatched: bool = False, timing: str = "cpu", plot: bool = True,
                      log: Callable[[str], None] = lambda s: None) -> Leaderboard:
    """Compare every model under ``sources`` (report, run or bench paths; see
    :mod:`caloforge.leaderboard.sources`) and write ``leaderboard.{csv,md,png,html}`` into
    ``output`` (``None``: write nothing).

    Every entry must have been evaluated against the same reference file (``reference``: this
    file, default the first entry's); the others are refused with one line, or left out with a
    warning under ``skip_mismatched``.  ``dataset`` (``ds1-photons``, ``ds1-pions``, ``ds2``,
    ``ds3``) picks the published rows; by default it is the reports' geometry.  ``timing``:
    ``cpu`` or ``gpu`` (the bench rows and published columns used for ms per shower).
    """
    from caloforge.io import check_output_dir
    from caloforge.leaderboard import write

    if timing not in TIMINGS:
        raise ConfigError(f"--timing {timing!r}: expected cpu or gpu")
    out = check_output_dir(output) if output is not None else None
    entries = [read_entry(s, timing) for s in find_sources(sources, benches)]
    warnings: list[str] = []
    entries, target = _check_reference(entries, reference, skip_mismatched, warnings)
    for w in warnings:
        log(f"left out: {w}")
    geometry, ds, origin = _dataset(entries, dataset)
    _mark_pareto(entries)
    entries.sort(key=lambda e: (not (e.pareto_auc or e.pareto_fpd), e.ms_per_shower_b10000 or float("inf")))
    published = published_entries(ds, timing) if ds is not None else []
    board = Leaderboard(entries, published, geometry, ds, origin, target, timing, warnings)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        board.files["csv"] = write.write_csv(entries + published, out / "leaderboard.csv")
        board.files["md"] = write.write_markdown(board, out / "leaderboard.md")
        if plot:
            board.files["png"] = write.write_png(board, out / "leaderboard.png")
        board.files["html"] = write.write_html(board, out / "leaderboard.html", board.files.get("png"))
    return board
