"""Generation: one backend interface over vLLM (HTTP) and an embedded transformers+PEFT engine."""
