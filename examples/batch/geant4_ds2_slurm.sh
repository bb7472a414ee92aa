#!/bin/bash
# A Geant4 reference production for the CaloChallenge DS2 detector on a Slurm farm:
# 100 000 electrons, 1 GeV – 1 TeV log-uniform (≈ 30 CPU-hours), as 100 one-core jobs.
#
#   sbatch examples/batch/geant4_ds2_slurm.sh              # the array: shards 1 … 100
#   sbatch --dependency=afterok:<ARRAY_JOB_ID> --wrap \
#       'caloforge merge ds2-g4/shard-*.h5 -o ds2-g4.h5'   # one file, identical to a single run
#
# Every shard runs the same command with its own --shard K/N: each shard is a contiguous range
# of whole blocks, and every block has its own random stream, so the merged file does not depend
# on how many jobs made it.  Build the Geant4 application once before submitting
# (`caloforge geant4 build`, and `caloforge geant4 calibrate -g ds2` for the sampling fractions) so
# that the jobs share the cache instead of compiling 100 times; point CALOFORGE_CACHE_DIR at a
# shared file system if the nodes do not share $HOME.
#SBATCH --job-name=ds2-g4
#SBATCH --array=1-100
#SBATCH --cpus-per-task=1
#SBATCH --mem=2G
#SBATCH --time=01:00:00
#SBATCH --signal=B:TERM@120
set -euo pipefail
mkdir -p ds2-g4
# On SIGTERM (the time limit, or scancel) the finished blocks stay in ds2-g4/shard-K.partial.h5
# and the job exits 143: resubmit that shard.
exec caloforge simulate --engine geant4 --preset ds2 --seed 1 -j 1 -q \
    --shard "${SLURM_ARRAY_TASK_ID}/100" -o "ds2-g4/shard-${SLURM_ARRAY_TASK_ID}.h5"
