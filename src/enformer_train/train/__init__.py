"""Training: the distributed setup, the loop, validation metrics, checkpoints and logs."""
