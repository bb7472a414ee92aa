#!/usr/bin/env bash
# On one GPU: flow matching for DS1 photons, DS1 pions and DS2, trained side by side on
# one GPU for the same wall-clock budget, evaluated with the full CaloChallenge protocol
# (`caloforge evaluate --classifier`, 50 epochs, float64) on the GPU, and generation timed there.
#
# Three phases, each meant to fit one command on a lent GPU machine (state in $GPU_WORK):
#   setup   simulate the files, calibrate iterations/s of the three runs together (their cosine
#           learning rate must end with the budget), launch the runs in the background, and
#           smoke-test generate/evaluate/bench on the GPU with the calibration models (`smoke`)
#   wait    print the runs' progress for $WAIT_S seconds (keeps the machine while they train)
#   finish  wait for the runs, evaluate every model and the photon step curve, time generation,
#           pack the results (and the photon sample, in parts) into $OUT
#
#   bash benchmarks/gpu_flows.sh setup && bash benchmarks/gpu_flows.sh finish
#
# Small-scale rehearsal on a CPU: DEVICE=cpu SCALE=0.02 HOLDOUT_SCALE=0.01 BUDGET_S=40 CAL_S=20 EPOCHS=1 J=2
#   HIDDEN='[64,64]' BATCH=64 PYTHON=.venv/bin/python GPU_WORK=/tmp/rehearsal bash benchmarks/gpu_flows.sh setup
set -euo pipefail
phase=${1:?usage: gpu_flows.sh setup|smoke|wait|finish}
W=${GPU_WORK:-/tmp/gpu}
DEVICE=${DEVICE:-cuda}
SCALE=${SCALE:-1}              # training files: fraction of each preset
HOLDOUT_SCALE=${HOLDOUT_SCALE:-0.2}
BUDGET_S=${BUDGET_S:-780}      # wall-clock training budget of every run
CAL_S=${CAL_S:-75}
EPOCHS=${EPOCHS:-50}           # classifier epochs (the protocol's 50)
J=${J:-16}
DATASETS=${DATASETS:-"photons pions ds2"}
PY=${PYTHON:-python3}
OUT=${OUT:-$W/out}
export PYTHONUNBUFFERED=1
export TORCH_ALLOW_TF32_CUBLAS_OVERRIDE=1   # TF32 matrix products for fp32 training: the GPU row says so
cf() { "$PY" -m caloforge "$@"; }
preset() { case $1 in photons) echo ds1-photons ;; pions) echo ds1-pions ;; ds2) echo ds2 ;; esac; }

# The GPU variant of the shipped flow-matching config: wider network, larger batch; the cosine
# learning rate decays over what the budget buys (ITERS).
config() {  # config DATASET ITERS OUT.yaml
    "$PY" - "$@" <<'EOF'
import json, os, sys, yaml
from pathlib import Path
import caloforge
dataset, iters, out = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
cfg = yaml.safe_load((Path(caloforge.__file__).parent / "configs" / "flow-matching-photons.yaml").read_text())
geometry = {"photons": "ds1-photons", "pions": "ds1-pions", "ds2": "ds2"}[dataset]
cfg["description"] = f"flow matching, GPU-sized, {geometry}"
hidden = json.loads(os.environ.get("HIDDEN", "[2048, 2048, 2048]"))
batch = int(os.environ.get("BATCH", 1024 if dataset == "ds2" else 4096))
cfg["model"].update(geometry=geometry, hidden=hidden, lr_decay_iterations=iters)
cfg["training"].update(batch_size=batch, keep_checkpoints=3, stream="false",
                       tensorboard=False)
out.write_text(yaml.safe_dump(cfg, sort_keys=False))
EOF
}

rate() {  # iterations per second of a run, from the second half of its log
    "$PY" - "$1/log.csv" <<'EOF'
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
a, b = rows[len(rows) // 2], rows[-1]
if a is b:  # one row: count from the start, loading included
    a = {"iteration": 0, "elapsed_s": 0.0}
print(f"{(int(b['iteration']) - int(a['iteration'])) / (float(b['elapsed_s']) - float(a['elapsed_s'])):.3f}")
EOF
}

train_bg() {  # train_bg DATASET NAME CONFIG SECONDS: in its own session, so it outlives this command
    local d=$1 name=$2
    setsid nohup sh -c "$PY -m caloforge train -c $3 -d $W/$d/train.h5 -o $W/$d/$name --device $DEVICE \
        --max-time ${4}s --threads 4 --no-progress > $W/$d/$name.log 2>&1; echo \$? > $W/$d/$name.rc" \
        > /dev/null 2>&1 < /dev/null &
}

wait_rc() {  # wait_rc NAME: until every dataset's NAME.rc exists; fail if one is not 0
    for d in $DATASETS; do
        until [ -f "$W/$d/$1.rc" ]; do sleep 5; done
        echo "$d/$1: exit $(cat "$W/$d/$1.rc")"; tail -n 2 "$W/$d/$1.log"
    done
    for d in $DATASETS; do [ "$(cat "$W/$d/$1.rc")" = 0 ] || return 1; done
}

case $phase in
setup)
    mkdir -p "$W"
    nvidia-smi -L 2>/dev/null || true
    "$PY" -c "import torch, numpy; print('torch', torch.__version__, 'numpy', numpy.__version__, \
'cuda', torch.cuda.is_available() and torch.cuda.get_device_name())"
    for d in $DATASETS; do
        mkdir -p "$W/$d"
        cf simulate --preset "$(preset $d)" --seed 0 --scale "$SCALE" -j "$J" -o "$W/$d/train.h5" > /dev/null
        if [ "$d" = photons ] && [ -f runs/flows60/holdout.h5 ] && [ "$HOLDOUT_SCALE" = 0.2 ]; then
            cp runs/flows60/holdout.h5 "$W/$d/holdout.h5"   # the very file of the CPU table
        else
            cf simulate --preset "$(preset $d)" --seed 1000 --scale "$HOLDOUT_SCALE" -j "$J" \
                -o "$W/$d/holdout.h5" > /dev/null
        fi
    done
    "$PY" - $W $DATASETS <<'EOF'
import hashlib, sys, h5py
for d in sys.argv[2:]:
    for f in ("train", "holdout"):
        with h5py.File(f"{sys.argv[1]}/{d}/{f}.h5") as h:
            s, e = h["showers"][:], h["incident_energies"][:]
        digest = hashlib.sha256(s.tobytes() + e.tobytes()).hexdigest()[:16]
        print(d, f, s.shape, "sha256[:16] of showers+energies:", digest)
EOF
    # calibration: the three runs together, as they will train
    for d in $DATASETS; do config $d 100000 "$W/$d/cal.yaml"; train_bg $d cal "$W/$d/cal.yaml" "$CAL_S"; done
    wait_rc cal
    for d in $DATASETS; do
        r=$(rate "$W/$d/cal")
        iters=$("$PY" -c "print(int($r * $BUDGET_S * 0.85))")  # the scoring pauses are not in the rate
        echo "$d: $r it/s together -> lr decays over $iters iterations"
        config $d "$iters" "$W/$d/fm.yaml"
    done
    date -u +%FT%TZ > "$W/launched"
    for d in $DATASETS; do train_bg $d fm "$W/$d/fm.yaml" "$BUDGET_S"; done
    bash "$0" smoke
    ;;
smoke)
    # smoke: generate, evaluate (1-epoch classifier) and bench on the device, with the calibration models
    for d in $DATASETS; do
        cf generate -m "$W/$d/cal/best" --like "$W/$d/holdout.h5" --device "$DEVICE" -o "$W/$d/cal-gen.h5" \
            > "$W/$d/cal-smoke.log" 2>&1
        cf evaluate --reference "$W/$d/holdout.h5" --generated "$W/$d/cal-gen.h5" --classifier --cls-epochs 1 \
            --device "$DEVICE" --no-plots --max-showers 4000 --geometry "$(preset $d)" -o "$W/$d/cal-eval" \
            >> "$W/$d/cal-smoke.log" 2>&1 || { tail -n 20 "$W/$d/cal-smoke.log"; exit 1; }
        grep "protocol:" "$W/$d/cal-smoke.log"
    done
    cf bench -m "$W/photons/cal/best" --paths generate --batches 1,100,10000 --repeats 2 \
        > "$W/cal-bench.txt" 2>&1 \
        || { tail -n 20 "$W/cal-bench.txt"; exit 1; }
    { grep -v "published" "$W/cal-bench.txt" || true; } | tail -n 12
    ;;
wait)
    end=$(( $(date +%s) + ${WAIT_S:-540} ))
    while [ "$(date +%s)" -lt "$end" ]; do
        for d in $DATASETS; do echo "$d: $(tail -n 1 "$W/$d/fm/log.csv" 2>/dev/null | cut -d, -f1-3)"; done
        [ -n "$(ls "$W"/*/fm.rc 2>/dev/null | head -1)" ] && break
        sleep 60
    done
    ;;
finish)
    wait_rc fm || true
    mkdir -p "$OUT"
    # every dataset: the default 4 Euler steps under the full protocol; photons also 2, 8, 16 steps
    jobs_=()
    for d in $DATASETS; do
        steps="4"; [ "$d" = photons ] && steps="4 2 8 16"
        for s in $steps; do
            (
                cf generate -m "$W/$d/fm/best" --like "$W/$d/holdout.h5" --device "$DEVICE" --sampling steps=$s \
                    -o "$W/$d/gen$s.h5" > /dev/null
                OMP_NUM_THREADS=3 "$PY" -m caloforge evaluate --reference "$W/$d/holdout.h5" \
                    --generated "$W/$d/gen$s.h5" --classifier --cls-epochs "$EPOCHS" --device "$DEVICE" --no-plots \
                    --geometry "$(preset $d)" \
                    -o "$W/$d/full$s" > "$W/$d/full$s.log" 2>&1 \
                || { [ "$s" = 4 ] && cf evaluate --reference "$W/$d/holdout.h5" --generated "$W/$d/gen$s.h5" \
                         --no-plots --geometry "$(preset $d)" -o "$W/$d/cpu$s" >> "$W/$d/full$s.log" 2>&1; }
            ) &
            jobs_+=($!)
        done
    done
    for p in "${jobs_[@]}"; do wait "$p" || echo "an evaluation failed (pid $p)"; done
    # generation time on the GPU: ms per shower at batch 1, 100, 10 000 (and 100 000), 1/4/16/64 steps
    timeout 150 "$PY" - "$W/photons/fm/best" "$DEVICE" "$W/timing.json" <<'EOF' || true
import json, sys, time
import numpy as np, torch
from caloforge.generate import generate, load_model
gen = load_model(sys.argv[1], device=sys.argv[2])
sync = torch.cuda.synchronize if sys.argv[2].startswith("cuda") else (lambda: None)
out = {"device": torch.cuda.get_device_name() if sys.argv[2].startswith("cuda") else "cpu", "ms_per_shower": {}}
for steps in (1, 4, 16, 64):
    for batch in (1, 100, 10_000, 100_000):
        n = batch if batch >= 10_000 else batch * (50 if batch == 1 else 20)
        e = np.full(n, 65_536.0)
        generate(gen, e[: min(n, 2 * batch)], batch_size=batch, sampling={"steps": steps})  # warm-up
        times = []
        for _ in range(3):
            sync(); t0 = time.perf_counter()
            generate(gen, e, batch_size=batch, sampling={"steps": steps}); sync()
            times.append((time.perf_counter() - t0) / n * 1e3)
        out["ms_per_shower"][f"steps{steps}_batch{batch}"] = float(np.median(times))
        print(f"steps {steps:2d} batch {batch:6d}: {np.median(times):.4f} ms/shower", flush=True)
json.dump(out, open(sys.argv[3], "w"), indent=1)
EOF
    # the CPU paths at one thread take minutes for this 9 M-parameter network: only `generate` (+ cuda)
    timeout 300 "$PY" -m caloforge bench -m "$W/photons/fm/best" --paths generate --batches 1,100,10000 --repeats 3 \
        -o "$W/bench.json" > "$W/bench.txt" 2>&1 || true
    { grep -v "published" "$W/bench.txt" || true; } | tail -n 12
    for d in $DATASETS; do for f in "$W/$d"/full*.log; do echo "$f: $(grep 'protocol:' "$f")"; done; done
    (cd "$W" && tar czf "$OUT/results.tgz" --exclude='*.h5' --exclude='checkpoints' --exclude='*.safetensors' \
        launched timing.json bench.json bench.txt */*.yaml */*.log */fm/*.csv */fm/run.json */fm/best/config.json \
        */full*/*.json */full*/*.txt */cpu4/*.json 2>/dev/null) || true
    split -b 15m "$W/photons/gen4.h5" "$OUT/photons_gen4.h5.part-" 2>/dev/null || true
    ls -la "$OUT"
    ;;
esac
