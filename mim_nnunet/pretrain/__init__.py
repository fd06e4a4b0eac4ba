"""MiM pre-training: settings, the per-rank loop, checkpoints, distribution, logs and export."""
