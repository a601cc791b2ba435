"""Training, evaluation, metrics, checkpointing and distributed helpers."""
