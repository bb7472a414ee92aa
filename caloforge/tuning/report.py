"""``caloforge tune --report``: the best trials, parameter importances and Optuna's plots.

Plots use Optuna's matplotlib backend (no plotly): optimisation history, parallel
coordinates, parameter importances and the intermediate (pruning) values, written as
PNG files to ``DIR/report/``; the same numbers go to ``DIR/report/report.json``.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from caloforge.errors import ConfigError

__all__ = ["StudyReport", "study_report", "resolve_study_name", "headline", "best_table", "importance_line"]


@dataclass
class StudyReport:
    study_name: str
    metric: str
    seeds: int
    counts: dict[str, int]
    best: list[dict[str, Any]]
    importances: dict[str, float] | None
    plots: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    report_json: Path | None = None


def resolve_study_name(storage, name: str | None) -> str:
    """``name``, or the only study in the storage; ConfigError naming the choices otherwise."""
    import optuna

    names = [s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)]
    if name is not None:
        if name not in names:
            raise ConfigError(f"no study {name!r} in this storage (studies: {', '.join(names) or 'none'})")
        return name
    if len(names) != 1:
        raise ConfigError("the storage holds " + (f"{len(names)} studies ({', '.join(names)}): name one with --study-name"
                                                   if names else "no study yet"))
    return names[0]


def _row(t) -> dict[str, Any]:
    a = t.user_attrs
    return {"number": t.number, "value": t.value, "std": a.get("std"), "values": a.get("values"),
            "params": dict(t.params), "trial_dir": a.get("trial_dir"), "host": a.get("host"),
            "duration_s": t.duration.total_seconds() if t.duration else None}


def _save(fig_or_ax, path: Path) -> Path:
    import matplotlib.pyplot as plt
    import numpy as np

    ax = fig_or_ax.flat[0] if isinstance(fig_or_ax, np.ndarray) else fig_or_ax
    fig = ax.figure if hasattr(ax, "figure") else ax
    fig.set_size_inches(max(fig.get_size_inches()[0], 9), max(fig.get_size_inches()[1], 5))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def study_report(storage, study_name: str | None, output: str | Path, top: int = 5,
                 plots: bool = True) -> StudyReport:
    """Summarise a study and write its plots to ``output/report``."""
    import matplotlib

    matplotlib.use("Agg")
    import optuna
    import optuna.visualization.matplotlib as vis

    from caloforge.io import atomic_path
    from caloforge.tuning.study import SETUP_ATTR, _update_study_best

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    name = resolve_study_name(storage, study_name)
    study = optuna.load_study(study_name=name, storage=storage)
    setup = study.user_attrs.get(SETUP_ATTR, {})
    trials = study.get_trials(deepcopy=False)
    counts: dict[str, int] = {}
    for t in trials:
        counts[t.state.name] = counts.get(t.state.name, 0) + 1
    complete = sorted((t for t in trials if t.state.name == "COMPLETE" and t.value is not None),
                      key=lambda t: (not math.isfinite(t.value), t.value))
    report = StudyReport(name, setup.get("metric", "?"), setup.get("seeds", 1), counts,
                         [_row(t) for t in complete[:top]], None)
    if len(complete) >= 2:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                report.importances = {k: float(v) for k, v in optuna.importance.get_param_importances(study).items()}
        except (RuntimeError, ValueError) as exc:
            report.notes.append(f"no parameter importances ({exc})")
    else:
        report.notes.append("parameter importances need at least 2 complete trials")
    out = Path(output) / "report"
    out.mkdir(parents=True, exist_ok=True)
    if plots:
        makers = {"optimization_history": vis.plot_optimization_history,
                  "parallel_coordinate": vis.plot_parallel_coordinate,
                  "param_importances": vis.plot_param_importances,
                  "intermediate_values": vis.plot_intermediate_values}
        for key, make in makers.items():
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    report.plots.append(_save(make(study), out / f"{key}.png"))
            except (RuntimeError, ValueError, TypeError, IndexError) as exc:
                report.notes.append(f"no {key} plot ({type(exc).__name__}: {str(exc)[:120]})")
    Path(output).mkdir(parents=True, exist_ok=True)
    _update_study_best(study, Path(output))
    report.report_json = out / "report.json"
    with atomic_path(report.report_json) as tmp:
        tmp.write_text(json.dumps({"study": name, "metric": report.metric, "seeds": report.seeds,
                                   "counts": counts, "best": report.best, "importances": report.importances,
                                   "setup": setup, "notes": report.notes}, indent=1, default=str))
    return report


# ----------------------------------------------------------------------------------
# The report as terminal text (caloforge tune --report prints these)
# ----------------------------------------------------------------------------------
def headline(report: StudyReport, storage: str) -> str:
    """The study's name, storage, trial counts by state and objective, in one (rich markup) line."""
    counts = ", ".join(f"{v} {k.lower()}" for k, v in sorted(report.counts.items()))
    seeds = f"{report.seeds} seed{'s' if report.seeds != 1 else ''}"
    return (f"[bold]study {report.study_name}[/] ({storage}): {counts}; objective: mean "
            f"{report.metric} over {seeds} (lower is better)")


def best_table(report: StudyReport):
    """The best trials as a :class:`rich.table.Table`: value, spread over seeds, per-seed values, parameters."""
    from rich import box
    from rich.table import Table

    from caloforge.formatting import format_number

    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    for col in ("trial", report.metric, "± spread", "seeds", "parameters"):
        table.add_column(col, justify="left" if col == "parameters" else "right")
    for row in report.best:
        params = ", ".join(f"{k}={format_number(v)}" for k, v in row["params"].items())
        values = row.get("values") or []
        spread = f"{row['std']:.3g}" if row.get("std") is not None and len(values) > 1 else "-"
        table.add_row(str(row["number"]), f"{row['value']:.4g}", spread, ", ".join(f"{v:.4g}" for v in values),
                      params)
    return table


def importance_line(report: StudyReport) -> str | None:
    """``parameter importances: lr 0.71, …``, or None when there are none."""
    if not report.importances:
        return None
    return "parameter importances: " + ", ".join(f"{k} {v:.2f}" for k, v in report.importances.items())
