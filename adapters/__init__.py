"""LoRA adapters: registry, validation, training and evals. Built in issue #5."""
