"""Train steps, data parallelism, metrics, the training loop and checkpoints."""
