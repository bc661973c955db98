#!/bin/bash
# Enformer on several nodes with SLURM: one torchrun per node, 8 GPUs each.
#SBATCH --job-name=enformer
#SBATCH --nodes=8
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=64
#SBATCH --time=72:00:00
#SBATCH --signal=TERM@300          # preemption warning: the trainer saves a checkpoint and exits
#SBATCH --requeue
set -euo pipefail
head_node=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
# --resume needs a checkpoint in the run folder: use it only when SLURM requeues the job.
resume=()
if [ "${SLURM_RESTART_COUNT:-0}" -gt 0 ]; then resume=(--resume); fi
srun torchrun \
  --nnodes "$SLURM_NNODES" --nproc-per-node 8 \
  --rdzv-backend c10d --rdzv-endpoint "$head_node:29500" --rdzv-id "$SLURM_JOB_ID" \
  --max-restarts 3 \
  -m enformer_train train --config configs/enformer.yaml "${resume[@]}" \
  train.run_dir=runs/enformer-$SLURM_JOB_ID train.batch_per_rank=1
