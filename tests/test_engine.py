"""The ONNX Runtime generation path: same showers as PyTorch from the same seed, used only where it applies."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from caloforge.engine import BLOCK, OnnxSampler, fast_sampler
from caloforge.errors import ConfigError
from caloforge.export import TOLERANCE, max_relative_deviation
from caloforge.generate import ShowerGenerator, generate
from tests.test_export import tiny_model


def _generator(model) -> ShowerGenerator:
    lo, hi = model.energy_limits
    return ShowerGenerator(model, Path("tiny"), model.geometry.name, model.n_voxels, lo, hi, 0, None, {})


def test_sampler_reproduces_model_sample_across_blocks():
    model = tiny_model("caloshowergan", 1)  # angles, impact point, kinetic energy
    sampler = OnnxSampler.build(model)
    n = 2 * BLOCK + 17  # several blocks and a remainder
    rng = np.random.default_rng(0)
    cond = {"incident_energy": rng.uniform(300, 4e6, n), "incident_theta": rng.uniform(0.9, 2.2, n),
            "incident_phi": rng.uniform(-3, 3, n), "impact_x": rng.normal(0, 5, n)}
    fast = sampler.sample(cond, torch.Generator().manual_seed(4))
    slow = model.sample(cond, torch.Generator().manual_seed(4)).numpy()
    assert fast.shape == slow.shape == (n, model.n_voxels) and slow.sum() > 0
    assert max_relative_deviation(slow, fast) <= TOLERANCE


def test_energy_split_keeps_pytorch():
    # it draws noise per energy range: the exported graph on sample_noise is not its sampler
    assert fast_sampler(tiny_model("energy_split")) is None
    assert fast_sampler(tiny_model("energy_split"), precision="auto") is None


def test_bf16_refuses_networks_with_other_weight_layers():
    import caloforge.engine as engine

    model = tiny_model("calogan")  # convolutions besides dense layers: half-bf16 eager would not pay
    _, _, left = engine.bf16_module(model.export_module().eval())
    assert left > 0
    with pytest.raises(ValueError, match="bf16|dense layers only"):
        engine.BF16Sampler.build(model, check_showers=64)
    gen = _generator(tiny_model("energy_split"))
    with pytest.raises(ConfigError, match="--engine onnxruntime is not available"):
        generate(gen, np.full(10, 5000.0), engine="onnxruntime")


def test_generate_engines_agree_for_a_seed():
    gen = _generator(tiny_model("caloshowergan", 0))
    e = np.geomspace(300.0, 4e6, 1500)
    a = generate(gen, e, seed=3, batch_size=700, engine="pytorch").showers
    b = generate(gen, e, seed=3, batch_size=700, engine="onnxruntime").showers
    assert a.sum() > 0 and max_relative_deviation(a, b) <= TOLERANCE
    with pytest.raises(ConfigError, match="--engine 'tensorrt'"):
        generate(gen, e, engine="tensorrt")


def test_fold_batchnorm_keeps_the_exported_function():
    from caloforge.engine import fold_batchnorm
    from caloforge.export import example_inputs

    model = tiny_model("caloshowergan", 0)  # non-trivial batch-norm statistics
    module = model.export_module().eval()
    folded = fold_batchnorm(module)
    assert not any(isinstance(m, torch.nn.BatchNorm1d) for m in folded.modules())
    assert any(isinstance(m, torch.nn.BatchNorm1d) for m in module.modules())  # the model itself is untouched
    noise, cond = example_inputs(model, 200, 1)
    with torch.no_grad():
        assert max_relative_deviation(module(noise, cond).numpy(), folded(noise, cond).numpy()) <= 1e-6


def test_bf16_module_packs_the_dense_sequentials():
    from caloforge.engine import BF16Sampler, bf16_module, bf16_supported

    model = tiny_model("caloshowergan", 0)
    if not bf16_supported():  # the module is still built; only running it needs oneDNN bf16
        with pytest.raises(ValueError, match="no native bf16"):
            BF16Sampler.build(model)
        return
    module = model.export_module().eval()
    packed, replaced, left = bf16_module(module)
    assert replaced >= 1 and left == 0 and not any(isinstance(m, torch.nn.Linear) for m in packed.modules())
    from caloforge.export import example_inputs

    noise, cond = example_inputs(model, 300, 1)
    with torch.no_grad():
        ref, out = module(noise, cond).numpy(), packed(noise, cond).numpy()
    dev = max_relative_deviation(ref, out)
    assert 0 < dev < 1e-2  # bf16 rounding: close to, never bit-equal with, fp32


def test_bf16_path_is_judged_by_its_physics_check(monkeypatch):
    import caloforge.engine as engine

    if not engine.bf16_supported():
        pytest.skip("this CPU has no native bf16 in oneDNN; test_bf16_module_packs_the_dense_sequentials checks "
                    "the refusal")
    model = tiny_model("caloshowergan", 0)
    gen = _generator(model)
    e = np.geomspace(300.0, 4e6, 600)
    # a check that cannot pass: no bf16 sampler, and the explicit engine says why
    monkeypatch.setattr(engine, "MAX_SHIFT", -1.0)
    with pytest.raises(ValueError, match="bf16 fails the physics check"):
        engine.BF16Sampler.build(model, check_showers=256)
    with pytest.raises(ConfigError, match="bf16 physics check"):
        generate(gen, e, engine="bf16")
    # a check that passes: the bf16 sampler follows the fp32 showers on the same seed
    monkeypatch.setattr(engine, "MAX_SHIFT", 1e9)
    sampler = engine.BF16Sampler.build(model, check_showers=256)
    assert sampler.precision == "bf16" and set(sampler.check) >= {"E_tot/E_inc", "hit voxels"}
    bf16 = generate(_generator(model), e, seed=5, engine="bf16", batch_size=5000).showers
    fp32 = generate(_generator(model), e, seed=5, engine="pytorch", batch_size=5000).showers
    assert np.isfinite(bf16).all() and (bf16 >= 0).all() and fp32.sum() > 0
    rel = np.abs(bf16.sum(1) - fp32.sum(1)) / fp32.sum(1)
    assert 0 < np.median(rel) < 0.02


def test_physics_check_sees_a_shifted_layer_profile():
    from caloforge.engine import MAX_SHIFT, physics_check
    from caloforge.geometry import load_geometry

    geo = load_geometry("ds1-photons")
    rng = np.random.default_rng(3)
    ref, fp32 = rng.gamma(2.0, 1.0, (2, 2000, geo.n_voxels))
    moved = fp32.copy()
    moved[:, geo.layer_slices[1]] *= 1.3  # 30 % more energy in one layer: E_tot and every fraction move
    e = np.full(2000, 1000.0)
    check = physics_check(ref, fp32, moved, e, geo)
    assert check["layer 1 fraction"] > 10 * MAX_SHIFT and check["E_tot/E_inc"] > MAX_SHIFT
    assert max(physics_check(ref, fp32, fp32, e, geo).values()) == 0.0
    assert max(physics_check(ref, fp32, fp32 * (1 + 1e-5), e, geo).values()) <= MAX_SHIFT


def test_student_with_an_envelope_stays_in_pytorch_under_auto():
    """The envelope's exact water-filling is a loop in PyTorch and a costlier sort in the export:
    ``auto`` keeps such a student in PyTorch at any request size; ``onnxruntime`` still runs the
    export, with the same showers."""
    from caloforge.generate import FAST_MIN_SHOWERS, _sampler

    student = tiny_model("student")
    assert student.representation.envelope is not None and student.eager_is_faster
    gen = _generator(student)
    assert _sampler(gen, FAST_MIN_SHOWERS * 3, "auto") is None
    assert _sampler(gen, FAST_MIN_SHOWERS * 3, "onnxruntime") is not None
    assert not tiny_model("caloshowergan", 0).eager_is_faster
    e = np.geomspace(300.0, 4e6, 600)
    a = generate(gen, e, seed=2, batch_size=300, engine="pytorch").showers
    b = generate(gen, e, seed=2, batch_size=300, engine="onnxruntime").showers
    assert a.sum() > 0 and max_relative_deviation(a, b) <= TOLERANCE


@pytest.mark.parametrize("name", ["caloshowergan", "student"])
def test_sample_in_cache_sized_blocks_gives_the_whole_batch_showers(name, monkeypatch):
    """``sample`` decodes ``decode_rows`` showers at a time: the same noise, the same showers as one
    pass over the whole batch (to float32 rounding: a matrix product may block rows differently)."""
    model = tiny_model(name, 0) if name == "caloshowergan" else tiny_model(name)
    e = torch.tensor(np.geomspace(300.0, 4e6, 250))
    whole = model.sample(e, torch.Generator().manual_seed(5))
    monkeypatch.setattr(type(model), "decode_rows", property(lambda self: 64))
    calls, decode = [], model.decode
    monkeypatch.setattr(model, "decode", lambda noise, *a: calls.append(len(noise)) or decode(noise, *a))
    blocks = model.sample(e, torch.Generator().manual_seed(5))
    assert calls == [64, 64, 64, 58]
    assert whole.shape == blocks.shape == (250, model.n_voxels) and whole.sum() > 0
    assert max_relative_deviation(whole.numpy(), blocks.numpy()) <= 1e-6
