"""Fine-tuning: a run started from a trained model (--init-from), frozen parts, learning-rate scale and
warm-up, kept or refitted preprocessing, resume, and the one-line refusals."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file
from typer.testing import CliRunner

from caloforge.cli import app
from caloforge.errors import ConfigError, DataError
from caloforge.io import write_showers
from caloforge.models import get_family, load_config
from caloforge.train import train
from test_train import _one_line_error, _tiny, toy_photons


def _fine_tune(iterations: int = 20, **fine_tune) -> dict:
    cfg = _tiny(max_iterations=iterations, checkpoint_every=5, keep_checkpoints=10)
    cfg["training"]["fine_tune"] = fine_tune
    return cfg


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(Path(path) / "model.safetensors")


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """A trained CaloShowerGAN (tiny, on toy photons at 256 MeV – 65 GeV): RUN_DIR/best."""
    run = tmp_path_factory.mktemp("source") / "run"
    train(_tiny(max_iterations=10, checkpoint_every=10), toy_photons(), run, progress=False, threads=1)
    return run / "best"


@pytest.fixture(scope="module")
def new_showers():
    """The showers fine-tuned on: other energies (1 – 16 GeV) and another response spread."""
    return toy_photons(40, seed=1, energies=(1024.0, 16384.0), spread=0.03)


@pytest.fixture(scope="module")
def data_file(tmp_path_factory, new_showers) -> Path:
    path = tmp_path_factory.mktemp("data") / "new.h5"
    write_showers(path, new_showers.incident_energy, new_showers.showers)
    return path


def test_init_from_starts_from_the_source_weights(tmp_path, source, new_showers, monkeypatch):
    gan = get_family("caloshowergan")
    first: dict[str, torch.Tensor] = {}
    step = gan.training_step

    def recording_step(self, *args, **kwargs):
        if not first:
            first.update({k: v.detach().clone() for k, v in self.state_dict().items()})
        return step(self, *args, **kwargs)

    monkeypatch.setattr(gan, "training_step", recording_step)
    train(_fine_tune(5), new_showers, tmp_path / "ft", progress=False, threads=1, init_from=source.parent)
    src = _weights(source)
    assert first.keys() == src.keys()
    for k in src:
        assert torch.equal(first[k], src[k]), k
    info = json.loads((tmp_path / "ft" / "run.json").read_text())["init_from"]
    assert info["source"] == str(source.resolve()) and info["fresh"] == [] and sorted(info["carried"]) == sorted(src)
    assert info["preprocessing"] == "keep" and info["iteration"] == 10
    meta = json.loads((tmp_path / "ft" / "best" / "config.json").read_text())
    assert meta["init_from"]["sha256"] == info["sha256"]


def test_fine_tune_then_resume_is_bit_identical(tmp_path, source, new_showers):
    """Interrupted after 10 of 20 iterations (frozen generator, lr scale, warm-up), resumed with and
    without --init-from, or killed before its first checkpoint: the same weights and optimiser moments."""
    cfg = _fine_tune(20, freeze=["generator.net.0"], learning_rate_scale=0.5, warmup_iterations=8)
    kw = dict(progress=False, threads=1)
    train(cfg, new_showers, tmp_path / "ref", init_from=source, **kw)
    train(cfg, new_showers, tmp_path / "a", init_from=source, max_iterations=10, **kw)
    train(cfg, new_showers, tmp_path / "a", resume=True, **kw)
    train(cfg, new_showers, tmp_path / "b", init_from=source, max_iterations=10, **kw)
    train(cfg, new_showers, tmp_path / "b", resume=True, init_from=source, **kw)
    train(cfg, new_showers, tmp_path / "c", init_from=source, max_iterations=3, **kw)
    for written in ("checkpoints", "best", "scores.csv"):  # as a kill before the first checkpoint leaves it
        shutil.rmtree(tmp_path / "c" / written) if written == "checkpoints" else (tmp_path / "c" / written).unlink()
    train(cfg, new_showers, tmp_path / "c", resume=True, **kw)  # initialised again from the recorded source
    for run in ("a", "b", "c"):
        for name in ("model.safetensors", "optimizer.safetensors"):
            ref = load_file(tmp_path / "ref" / "checkpoints" / "iter-0000020" / name)
            got = load_file(tmp_path / run / "checkpoints" / "iter-0000020" / name)
            assert ref.keys() == got.keys()
            for k in ref:
                assert torch.equal(ref[k], got[k]), f"{run}: {name}:{k}"
        assert (tmp_path / "ref" / "scores.csv").read_text() == (tmp_path / run / "scores.csv").read_text()
    with pytest.raises(ConfigError, match="started from"):
        train(cfg, new_showers, tmp_path / "a", resume=True, init_from=tmp_path / "ref" / "best", **kw)


def test_frozen_parameters_stay_bit_identical(tmp_path, source, new_showers):
    train(_fine_tune(10, freeze=["generator"], learning_rate_scale=0.1, warmup_iterations=3), new_showers,
          tmp_path / "ft", progress=False, threads=1, init_from=source)
    src, done = _weights(source), _weights(tmp_path / "ft" / "checkpoints" / "iter-0000010")
    params = dict(_model(tmp_path / "ft").named_parameters())
    frozen = [k for k in params if k.startswith("generator.")]
    trained = [k for k in params if k.startswith("critic.") and k.endswith("weight")]  # (a WGAN critic's
    # output bias gets no gradient: it cancels between real and generated showers)
    assert frozen and trained
    assert all(torch.equal(src[k], done[k]) for k in frozen)
    assert all(not torch.equal(src[k], done[k]) for k in trained)
    assert json.loads((tmp_path / "ft" / "run.json").read_text())["init_from"]["frozen"] == frozen


def _model(run: Path):
    from caloforge.checkpoint import restore_model

    return restore_model(run / "best")[0]


def test_preprocessing_kept_or_refitted(tmp_path, source, new_showers):
    src_state = json.loads((source / "config.json").read_text())["state"]
    states = {}
    for mode in ("keep", "refit"):
        train(_fine_tune(5, preprocessing=mode), new_showers, tmp_path / mode, progress=False, threads=1,
              init_from=source)
        states[mode] = json.loads((tmp_path / mode / "best" / "config.json").read_text())["state"]
    assert states["keep"] == src_state
    assert states["refit"] != src_state  # the condition range of the new showers: 1 – 16 GeV
    lo, hi = (states["refit"]["conditions"]["specs"][0][k] for k in ("lo", "hi"))
    assert (lo, hi) == (1024.0, 16384.0)
    assert json.loads((tmp_path / "refit" / "run.json").read_text())["init_from"]["preprocessing"] == "refit"


def _cli(tmp_path, cfg: dict, data: Path, source, *extra: str):
    path = tmp_path / f"cfg-{len(list(tmp_path.glob('cfg-*')))}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return CliRunner().invoke(app, ["train", "-c", str(path), "-d", str(data), "-o", str(tmp_path / "run"),
                                    "--no-progress", "--threads", "1", "--init-from", str(source), *extra])


def test_cli_refuses_another_family_with_one_line(tmp_path, source, data_file, new_showers):
    from caloforge.checkpoint import write_checkpoint
    from caloforge.models.base import fit

    flow = load_config("caloflow-tiny").model
    s = torch.as_tensor(new_showers.showers)
    e = torch.as_tensor(new_showers.incident_energy)
    write_checkpoint(tmp_path / "flow", fit(flow, s, e, {}))
    r = _cli(tmp_path, _fine_tune(5), data_file, tmp_path / "flow")
    line = _one_line_error(r)
    assert r.exit_code == 2 and "caloflow" in line and "caloshowergan" in line and "another model family" in line
    assert str(tmp_path / "flow") in line and not (tmp_path / "run" / "run.json").exists()


def test_cli_shape_mismatch_needs_init_partial(tmp_path, source, data_file):
    wider = _fine_tune(5)
    wider["model"]["generator_hidden"] = [24]
    r = _cli(tmp_path, wider, data_file, source)
    line = _one_line_error(r)
    assert r.exit_code == 2 and "--init-partial" in line and "generator.net.0.weight" in line and str(source.resolve()) in line
    r = _cli(tmp_path, wider, data_file, source, "--init-partial")
    assert r.exit_code == 0, r.output
    info = json.loads((tmp_path / "run" / "run.json").read_text())["init_from"]
    assert info["partial"] and "generator.net.0.weight" in info["fresh"] and "critic.net.0.weight" in info["carried"]
    assert "carried" in r.output and "initialised fresh" in r.output


def test_missing_or_garbage_source_is_one_line(tmp_path, source, data_file, new_showers):
    r = _cli(tmp_path, _fine_tune(5), data_file, tmp_path / "nowhere")
    assert r.exit_code == 2 and "nowhere" in _one_line_error(r)
    bad = tmp_path / "garbage"
    shutil.copytree(source, bad)
    (bad / "model.safetensors").write_bytes(b"\x00\x01 not a safetensors file" * 10)
    r = _cli(tmp_path, _fine_tune(5), data_file, bad)
    assert r.exit_code == 2 and "model.safetensors" in _one_line_error(r)
    (bad / "config.json").write_text("{not json")
    r = _cli(tmp_path, _fine_tune(5), data_file, bad)
    assert r.exit_code == 2 and "config.json" in _one_line_error(r)
    pickled = tmp_path / "model.pt"
    pickled.write_bytes(b"\x80\x04 pickle")
    r = _cli(tmp_path, _fine_tune(5), data_file, pickled)
    assert r.exit_code == 2 and "pickle" in _one_line_error(r)
    with pytest.raises(DataError):
        train(_fine_tune(5), new_showers, tmp_path / "api", progress=False, init_from=tmp_path / "nowhere")


def test_fine_tune_options_are_checked(tmp_path, source, new_showers):
    for bad, key in [({"learning_rate_scale": 0}, "learning_rate_scale"), ({"warmup_iterations": -1}, "warmup"),
                     ({"preprocessing": "reuse"}, "preprocessing"), ({"freez": []}, "did you mean"),
                     ({"freeze": ["generator net"]}, "freeze[0]")]:
        with pytest.raises(ConfigError, match="training.fine_tune") as exc:
            load_config(_fine_tune(5, **bad))
        assert key in str(exc.value) and "\n" not in str(exc.value)
    with pytest.raises(ConfigError, match="names no parameter.*its modules: critic, generator"):
        train(_fine_tune(5, freeze=["decoder"]), new_showers, tmp_path / "a", progress=False, init_from=source)
    with pytest.raises(ConfigError, match="needs trained weights"):
        train(_fine_tune(5, freeze=["generator"]), new_showers, tmp_path / "b", progress=False)
    linear = _fine_tune(5, preprocessing="keep")
    linear["model"]["conditions"] = {"incident_energy": "linear"}
    with pytest.raises(ConfigError, match="fitted for other conditions.*preprocessing: refit"):
        train(linear, new_showers, tmp_path / "d", progress=False, init_from=source)
    with pytest.raises(ConfigError, match="every parameter"):
        train(_fine_tune(5, freeze=["generator", "critic"]), new_showers, tmp_path / "c", progress=False,
              init_from=source)


def test_learning_rate_scale_follows_a_family_schedule():
    """A cosine schedule writes the lr before each step; the scale applies on top and is undone after."""
    from caloforge.fine_tuning import LearningRateScale

    w = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([w], lr=1.0)
    scale = LearningRateScale({"sgd": opt}, scale=0.1, warmup_iterations=2)
    moves = []
    for it, family_lr in enumerate([1.0, 0.5, 0.5]):
        scale.iteration = it
        opt.param_groups[0]["lr"] = family_lr
        before = float(w.detach())
        w.grad = torch.ones(1)
        opt.step()
        moves.append(round(before - float(w.detach()), 6))
        assert opt.param_groups[0]["lr"] == family_lr
    assert moves == [0.05, 0.05, 0.05]
    np.testing.assert_allclose([scale.factor(i) for i in range(3)], [0.05, 0.1, 0.1])


def test_a_flow_with_a_cosine_schedule_fine_tunes_with_a_frozen_part(tmp_path, new_showers):
    """Family-independent: the two-stage flow builds one Adam over its parameters and writes its own
    cosine learning rate each step; its frozen layer flow still stays bit-identical."""
    cfg = load_config("caloflow-tiny").to_dict()
    cfg["model"]["lr_decay_iterations"] = 20
    cfg["training"].update(max_iterations=6, checkpoint_every=6, score_max_showers=50)
    train(cfg, new_showers, tmp_path / "src", progress=False, threads=1)
    cfg["training"]["fine_tune"] = {"freeze": ["layer_flow"], "learning_rate_scale": 0.5, "warmup_iterations": 2}
    train(cfg, new_showers, tmp_path / "ft", progress=False, threads=1, init_from=tmp_path / "src")
    src, done = _weights(tmp_path / "src" / "best"), _weights(tmp_path / "ft" / "checkpoints" / "iter-0000006")
    layer = [k for k in src if k.startswith("layer_flow.")]
    voxel = [k for k in src if k.startswith("voxel_flow.") and k.endswith("weight")]
    assert layer and voxel
    assert all(torch.equal(src[k], done[k]) for k in layer)
    assert any(not torch.equal(src[k], done[k]) for k in voxel)
