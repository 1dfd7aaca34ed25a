"""What keeps a training run alive and honest: crash-consistent checkpoints, preemption, the run lock, input checks."""
