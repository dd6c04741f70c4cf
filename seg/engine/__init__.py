"""Training, evaluation and inference engines (plain arguments, no Hydra)."""
