"""The CaloChallenge classifier two-sample test.

A fully connected network learns to tell reference showers (label 1) from generated
ones (label 0).  If it cannot, the samples are indistinguishable: test AUC ≈ 0.5
and JSD ≈ 0.  The setup follows CaloChallenge's ``code/evaluate.py``:

* inputs — ``"low"``: log10 E_inc and the voxels as a percentage of E_inc
  (``100 · voxel / E_inc``; CaloChallenge feeds the fraction ``voxel / E_inc``, the
  same input after the default standardisation); ``"low-normed"``: log10 E_inc, voxels divided by
  their layer's energy and log10(E_layer + 1e-8); ``"high"``: the high-level
  matrix of :func:`caloforge.evaluate.features.high_level_matrix`;
* both samples cut to the same size, each split 60/20/20 into train / validation /
  test; a DNN (Linear + LeakyReLU, ``n_layers`` hidden layers of ``n_hidden``,
  logits trained with BCE, Adam, lr 2e-4, batch 1000 by default);
* the epoch with the lowest validation loss is kept (early stopping with
  ``patience``); its outputs are calibrated with isotonic regression on the
  validation part; on the test part AUC and JSD = (ln 2 − BCE)/ln 2 are reported
  (both after calibration as CaloChallenge quotes them; raw values as ``*_raw``).

Everything is seeded (``seed``) and runs on ``device="cpu"``, ``"cuda"`` or
``"auto"``.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Literal, Mapping

import numpy as np

from caloforge.errors import ConfigError, DataError
from caloforge.geometry import Geometry, load_geometry

__all__ = [
    "CLASSIFIER_MAX_BYTES",
    "classifier_sample_size",
    "classifier_metrics",
    "prepare_low",
    "prepare_high",
    "roc_auc",
    "isotonic_calibration",
    "classifier_test",
    "classifier_test_arrays",
]

Mode = Literal["low", "low-normed", "high"]


# ----------------------------------------------------------------------------------
# inputs
# ----------------------------------------------------------------------------------
def _arrays(sample: Any, what: str) -> tuple[np.ndarray, np.ndarray]:
    """(incident_energy (N,), showers (N, V)) from a ShowerData or a 2-tuple."""
    if hasattr(sample, "incident_energy") and hasattr(sample, "showers"):
        e, s = sample.incident_energy, sample.showers
    elif isinstance(sample, (tuple, list)) and len(sample) == 2:
        e, s = sample
    else:
        raise DataError(f"{what}: expected ShowerData or (incident_energy, showers), got {type(sample).__name__}")
    e = np.asarray(e, dtype=np.float64).reshape(-1)
    s = np.asarray(s)
    if s.ndim != 2 or len(s) != len(e):
        raise DataError(f"{what}: showers must be (N, n_voxels) with N = {len(e)}, got {s.shape}")
    if np.any(~np.isfinite(e)) or np.any(e <= 0):
        raise DataError(f"{what}: incident energies must be finite and positive")
    return e, s


def prepare_low(showers: np.ndarray, incident_energy: np.ndarray, geometry: Geometry | None = None, *,
                normed: bool = False, percent: bool = True) -> np.ndarray:
    """Low-level classifier input (float32).

    ``normed=False``: [log10 E_inc, 100 · voxels / E_inc] (``percent=False``: voxels / E_inc,
    the current official input);
    ``normed=True`` (needs ``geometry``): [log10 E_inc, voxels / E_layer, log10(E_layer + 1e-8)]
    over the active layers.

    >>> prepare_low(np.array([[5.0, 15.0]]), np.array([100.0])).tolist()
    [[2.0, 5.0, 15.0]]
    """
    e = np.asarray(incident_energy, dtype=np.float64).reshape(-1, 1)
    if not normed:
        showers = np.asarray(showers)
        scale = 100.0 if percent else 1.0
        out = np.empty((len(showers), showers.shape[1] + 1), dtype=np.float32)
        out[:, :1] = np.log10(e)
        for i in range(0, len(showers), 2048):  # float64 arithmetic a block at a time: the same values
            # without float64 copies of every shower (a DS2/DS3 sample would take several GiB)
            out[i:i + 2048, 1:] = scale * np.asarray(showers[i:i + 2048], dtype=np.float64) / e[i:i + 2048]
        return out
    s = np.asarray(showers, dtype=np.float64)
    if geometry is None:
        raise ConfigError("classifier mode 'low-normed' needs the geometry")
    layer_e = geometry.layer_energy(s)
    per_voxel = layer_e[:, geometry.voxel_layer]
    active = list(geometry.active_layers)
    return np.concatenate([np.log10(e), s / (per_voxel + 1e-16), np.log10(layer_e[:, active] + 1e-8)],
                          axis=1).astype(np.float32)


def prepare_high(showers: np.ndarray, incident_energy: np.ndarray, geometry: Geometry) -> np.ndarray:
    """High-level classifier input: :func:`~caloforge.evaluate.features.high_level_matrix`."""
    from caloforge.evaluate.features import high_level_matrix

    return high_level_matrix(showers, incident_energy, geometry).astype(np.float32)


# ----------------------------------------------------------------------------------
# statistics without scikit-learn
# ----------------------------------------------------------------------------------
def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (Mann–Whitney U with mid-ranks for ties).

    >>> roc_auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8]))
    0.75
    >>> roc_auc(np.array([0, 1]), np.array([0.5, 0.5]))
    0.5
    """
    labels = np.asarray(labels).astype(bool).reshape(-1)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    # mid-ranks: tied scores share the mean of the ranks they span
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    upper = np.cumsum(counts)
    ranks = (upper - (counts - 1) / 2.0)[inverse]
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def isotonic_calibration(scores: np.ndarray, labels: np.ndarray, *, y_min: float = 1e-6,
                         y_max: float = 1.0 - 1e-6):
    """Fit a non-decreasing map score → P(label = 1) (pool-adjacent-violators) and
    return it as a function; inputs outside the fitted range are clipped, values in
    between interpolated linearly (as scikit-learn's ``IsotonicRegression`` with
    ``out_of_bounds='clip'``).

    >>> f = isotonic_calibration(np.array([0.1, 0.2, 0.3, 0.4]), np.array([0, 1, 0, 1]))
    >>> f(np.array([0.0, 0.25, 1.0])).round(3).tolist()
    [0.0, 0.5, 1.0]
    """
    x = np.asarray(scores, dtype=np.float64).reshape(-1)
    y = np.asarray(labels, dtype=np.float64).reshape(-1)
    order = np.argsort(x, kind="mergesort")
    x, y = x[order], y[order]
    # equal scores share one block first (their order must not matter)
    ux, start = np.unique(x, return_index=True)
    sums = np.add.reduceat(y, start)
    counts = np.diff(np.append(start, len(x))).astype(np.float64)
    values, weights, xs = [], [], []
    for v, w, xv in zip(sums / counts, counts, ux):
        values.append(v)
        weights.append(w)
        xs.append([xv, xv])
        while len(values) > 1 and values[-2] > values[-1]:  # pool violators
            w_new = weights[-2] + weights[-1]
            v_new = (values[-2] * weights[-2] + values[-1] * weights[-1]) / w_new
            lo = xs[-2][0]
            hi = xs[-1][1]
            del values[-1], weights[-1], xs[-1]
            values[-1], weights[-1], xs[-1] = v_new, w_new, [lo, hi]
    knots_x = np.array([p for pair in xs for p in pair])
    knots_y = np.clip(np.repeat(values, 2), y_min, y_max)

    def predict(s: np.ndarray) -> np.ndarray:
        return np.interp(np.asarray(s, dtype=np.float64), knots_x, knots_y)

    return predict


def _bce(p: np.ndarray, y: np.ndarray) -> float:
    p = np.clip(p, 1e-12, 1.0 - 1e-12)
    return float(-np.mean(y * np.log(p) + (1.0 - y) * np.log(1.0 - p)))


# ----------------------------------------------------------------------------------
# the test
# ----------------------------------------------------------------------------------
def _device(device: str):
    from caloforge.runtime import resolve_device

    return resolve_device(device)  # one vocabulary everywhere: cpu | cuda | cuda:N | auto


def _network(input_dim: int, n_layers: int, n_hidden: int, dropout: float):
    import torch

    layers: list[torch.nn.Module] = [torch.nn.Linear(input_dim, n_hidden), torch.nn.LeakyReLU(),
                                     torch.nn.Dropout(dropout)]
    for _ in range(n_layers):
        layers += [torch.nn.Linear(n_hidden, n_hidden), torch.nn.LeakyReLU(), torch.nn.Dropout(dropout)]
    layers.append(torch.nn.Linear(n_hidden, 1))  # logits
    return torch.nn.Sequential(*layers)


def classifier_test_arrays(reference: np.ndarray, generated: np.ndarray, *, seed: int = 0, epochs: int = 50,
                           device: str = "cpu", n_layers: int = 2, n_hidden: int = 512,
                           dropout: float = 0.0, batch_size: int = 1000, lr: float = 2e-4,
                           patience: int | None = 10, split: tuple[float, float, float] = (0.6, 0.2, 0.2),
                           max_showers: int | None = None, standardise: bool = True,
                           selection: Literal["loss", "accuracy"] = "loss",
                           dtype: Literal["float32", "float64"] = "float32") -> dict[str, Any]:
    """Classifier two-sample test on prepared input matrices (rows = showers).

    Returns ``auc``, ``jsd`` (test part, after isotonic calibration on the validation
    part), ``auc_raw``, ``jsd_raw``, ``bce``, ``accuracy``, ``best_epoch``,
    ``epochs_run``, ``n_train``, ``n_validation``, ``n_test``, ``n_features``,
    ``device`` and ``seed``.

    ``standardise`` scales every input column by the training part's mean and
    standard deviation before the network (an affine map the first layer could
    learn, but which makes small or short trainings converge; CaloChallenge feeds
    the raw columns).

    ``selection``: which epoch is kept — ``"loss"``, the lowest BCE on the validation part
    (with early stopping after ``patience`` epochs); ``"accuracy"``, the official rule: the
    first epoch with the highest accuracy on that part, training stops early only when it
    reaches 1.  ``dtype``: ``"float64"`` as the official code (slower on CPU).
    """
    import torch

    x_ref = np.asarray(reference, dtype=np.float32)
    x_gen = np.asarray(generated, dtype=np.float32)
    if x_ref.ndim != 2 or x_gen.ndim != 2 or x_ref.shape[1] != x_gen.shape[1]:
        raise DataError(f"classifier inputs must be (N, F) with equal F, got {x_ref.shape} and {x_gen.shape}")
    if len(split) != 3 or min(split) <= 0 or not math.isclose(sum(split), 1.0):
        raise ConfigError(f"classifier split must be three positive fractions summing to 1, got {split}")
    if epochs < 1:
        raise ConfigError("classifier epochs must be >= 1")
    if selection not in ("loss", "accuracy"):
        raise ConfigError(f"classifier selection must be 'loss' or 'accuracy', not {selection!r}")
    if dtype not in ("float32", "float64"):
        raise ConfigError(f"classifier dtype must be float32 or float64, not {dtype!r}")
    np_dtype = np.float64 if dtype == "float64" else np.float32
    rng = np.random.default_rng(seed)
    n = min(len(x_ref), len(x_gen), max_showers or np.iinfo(np.int64).max)
    n_train, n_val = int(split[0] * n), int(split[1] * n)
    if n_train < 2 or n_val < 2 or n - n_train - n_val < 2:
        raise DataError(f"classifier test needs more showers: {n} per sample is too few to split")
    rows_ref, rows_gen = rng.permutation(len(x_ref))[:n], rng.permutation(len(x_gen))[:n]
    cut = [0, n_train, n_train + n_val, n]

    def part(k: int) -> tuple[np.ndarray, np.ndarray]:
        # each part gathered straight from the inputs: no shuffled copy of the whole samples
        a, b = rows_ref[cut[k]:cut[k + 1]], rows_gen[cut[k]:cut[k + 1]]
        x = np.nan_to_num(np.concatenate([x_ref[a], x_gen[b]]), copy=False, posinf=0.0, neginf=0.0)
        return x, np.concatenate([np.ones(len(a)), np.zeros(len(b))]).astype(np.float32)

    dev = _device(device)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    (xt, yt), (xv, yv), (xs, ys) = (part(k) for k in range(3))
    if standardise:
        mean, std = xt.mean(axis=0), xt.std(axis=0)
        std = np.where(std > 0, std, 1.0)
        xt, xv, xs = ((x - mean) / std for x in (xt, xv, xs))
    # the inputs stay float32 and each batch is widened on the way in: exact (float32 ⊂ float64),
    # and a float64 copy of a DS2/DS3-sized input matrix would double the classifier's memory
    torch_dtype = torch.float64 if dtype == "float64" else torch.float32
    yt, yv = yt.astype(np_dtype), yv.astype(np_dtype)
    xt_t, yt_t = torch.from_numpy(xt).to(dev), torch.from_numpy(yt).to(dev)
    xv_t, yv_t = torch.from_numpy(xv).to(dev), torch.from_numpy(yv).to(dev)
    model = _network(xt.shape[1], n_layers, n_hidden, dropout).to(dev)
    if dtype == "float64":
        model = model.double()
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = torch.nn.BCEWithLogitsLoss()

    def logits(x: torch.Tensor) -> torch.Tensor:
        model.eval()
        with torch.no_grad():
            return torch.cat([model(x[i:i + 8192].to(torch_dtype)).reshape(-1) for i in range(0, len(x), 8192)])

    best_loss, best_state, best_epoch, since_best, epoch = math.inf, None, 0, 0, 0
    best_acc = -math.inf
    for epoch in range(1, epochs + 1):
        model.train()
        order = torch.randperm(len(xt_t), generator=gen).to(dev)
        for i in range(0, len(order), batch_size):
            idx = order[i:i + batch_size]
            optimiser.zero_grad()
            loss = loss_fn(model(xt_t[idx].to(torch_dtype)).reshape(-1), yt_t[idx])
            loss.backward()
            optimiser.step()
        val_logits = logits(xv_t)
        if selection == "accuracy":  # the official rule: best accuracy, stop only at 100 %
            acc = float(((val_logits > 0) == (yv_t > 0.5)).double().mean())
            if acc > best_acc:
                best_acc, best_epoch = acc, epoch
                best_state = copy.deepcopy(model.state_dict())
            if acc == 1.0:
                break
            continue
        val_loss = float(loss_fn(val_logits, yv_t))
        if val_loss < best_loss - 1e-7:
            best_loss, best_epoch, since_best = val_loss, epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            since_best += 1
            if patience is not None and since_best >= patience:
                break
    if best_state is not None:
        model.load_state_dict(best_state)

    p_val = torch.sigmoid(logits(xv_t)).cpu().numpy().astype(np.float64)
    p_test = torch.sigmoid(logits(torch.from_numpy(xs).to(dev))).cpu().numpy().astype(np.float64)
    calibrate = isotonic_calibration(p_val, yv)
    p_cal = calibrate(p_test)
    bce_raw, bce = _bce(p_test, ys), _bce(p_cal, ys)
    return {
        "auc": roc_auc(ys, p_cal),
        "jsd": (math.log(2.0) - bce) / math.log(2.0),
        "auc_raw": roc_auc(ys, p_test),
        "jsd_raw": (math.log(2.0) - bce_raw) / math.log(2.0),
        "bce": bce,
        "accuracy": float(np.mean((p_cal > 0.5) == (ys > 0.5))),
        "best_epoch": int(best_epoch),
        "epochs_run": int(epoch),
        "n_train": int(len(xt)),
        "n_validation": int(len(xv)),
        "n_test": int(len(xs)),
        "n_features": int(xt.shape[1]),
        "device": str(dev),
        "seed": int(seed),
        "selection": selection,
        "n_hidden": int(n_hidden),
        "n_layers": int(n_layers),
        "epochs": int(epochs),
    }


def classifier_test(reference: Any, generated: Any, *, geometry: Geometry | str | None = None,
                    mode: Mode = "low", seed: int = 0, epochs: int = 50, device: str = "cpu",
                    **settings: Any) -> dict[str, Any]:
    """CaloChallenge classifier test between two shower samples.

    ``reference`` / ``generated``: :class:`~caloforge.io.ShowerData` or
    ``(incident_energy, showers)``.  ``mode``: ``"low"``, ``"low-normed"`` or
    ``"high"`` (the latter two need ``geometry``).  Other keyword arguments go to
    :func:`classifier_test_arrays` (``n_layers``, ``n_hidden``, ``dropout``,
    ``batch_size``, ``lr``, ``patience``, ``split``, ``max_showers``).  Returns its
    dict plus ``mode``.

    >>> rng = np.random.default_rng(0)
    >>> e = np.full(600, 1000.0)
    >>> ref = (e, rng.exponential(1.0, (600, 4)))
    >>> gen = (e, rng.exponential(2.0, (600, 4)))
    >>> r = classifier_test(ref, gen, epochs=20, n_hidden=32, n_layers=1, batch_size=100, lr=1e-2)
    >>> r["auc"] > 0.7
    True
    """
    e_ref, s_ref = _arrays(reference, "reference")
    e_gen, s_gen = _arrays(generated, "generated")
    if s_ref.shape[1] != s_gen.shape[1]:
        raise DataError(f"reference has {s_ref.shape[1]} voxels, generated {s_gen.shape[1]}")
    geo = load_geometry(geometry) if geometry is not None else None
    if geo is not None:
        geo.check_voxels(s_ref.shape[1])
    max_showers = settings.get("max_showers")
    if max_showers:  # prepare only what will be used: the input can be large
        rng = np.random.default_rng(seed + 1)
        keep_r = np.sort(rng.permutation(len(e_ref))[:max_showers])
        keep_g = np.sort(rng.permutation(len(e_gen))[:max_showers])
        e_ref, s_ref, e_gen, s_gen = e_ref[keep_r], s_ref[keep_r], e_gen[keep_g], s_gen[keep_g]
    percent = settings.pop("percent", True)
    if mode == "low":
        x_ref, x_gen = prepare_low(s_ref, e_ref, percent=percent), prepare_low(s_gen, e_gen, percent=percent)
    elif mode == "low-normed":
        x_ref, x_gen = prepare_low(s_ref, e_ref, geo, normed=True), prepare_low(s_gen, e_gen, geo, normed=True)
    elif mode == "high":
        if geo is None:
            raise ConfigError("classifier mode 'high' needs the geometry")
        x_ref, x_gen = prepare_high(s_ref, e_ref, geo), prepare_high(s_gen, e_gen, geo)
    else:
        raise ConfigError(f"classifier mode must be 'low', 'low-normed' or 'high', not {mode!r}")
    result = classifier_test_arrays(x_ref, x_gen, seed=seed, epochs=epochs, device=device, **settings)
    result["mode"] = mode
    return result


# ----------------------------------------------------------------------------------
# the evaluation's classifier stage
# ----------------------------------------------------------------------------------
# the low-level classifier keeps at most this many bytes of voxels per sample (float32):
# all of DS1/DS2-sized samples up to 100k showers… ~3.3k showers of DS3
CLASSIFIER_MAX_BYTES = 512 << 20


def classifier_sample_size(geometry: Geometry, classifier_max: int) -> int:
    """Showers per sample kept with their voxels for the low-level classifier: at most
    ``classifier_max`` and at most :data:`CLASSIFIER_MAX_BYTES` of float32 voxels (≥ 1000)."""
    return min(classifier_max, max(CLASSIFIER_MAX_BYTES // (4 * geometry.n_voxels), 1000))


def classifier_metrics(reference: Any, generated: Any, geometry: Geometry, *, seed: int, device: str,
                       settings: Mapping[str, Any], official: bool = False) -> dict[str, Any]:
    """The two-sample test of the evaluation on two :class:`~caloforge.evaluate.result.SampleSummary`:
    low level on their kept voxel subsamples, high level on every shower's feature matrix.
    ``official``: the CaloChallenge classifier (:data:`~caloforge.evaluate.calochallenge.CLASSIFIER_SETTINGS`,
    ``settings`` override it) with voxel / E_inc inputs."""
    from caloforge.evaluate.calochallenge import classifier_settings

    def scalars(res: Mapping[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in res.items() if isinstance(v, (int, float, np.integer, np.floating, str))}

    settings = classifier_settings(settings) if official else dict(settings)
    low_settings = dict(settings, percent=False) if official else settings
    low = classifier_test(reference.classifier_sample, generated.classifier_sample, geometry=geometry, mode="low",
                          seed=seed, device=device, **low_settings)
    high = classifier_test_arrays(reference.hl_matrix, generated.hl_matrix, seed=seed, device=device, **settings)
    high["mode"] = "high"
    return {"low": scalars(low), "high": scalars(high),
            "n_per_sample_low": min(len(reference.classifier_sample), len(generated.classifier_sample)),
            "n_per_sample_high": min(reference.n, generated.n)}

