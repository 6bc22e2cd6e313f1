"""LLM layer: loading (hub id, local dir, embedded GGUF, tiny random), prompts, generation,
sequence log-probs and preference losses."""
