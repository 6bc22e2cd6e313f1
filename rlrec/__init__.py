"""rlrec: LLM-enhanced recommendation trained with preference optimisation."""

import os

# oneDNN (bf16 matmuls on CPU) keeps one compiled primitive per distinct matmul shape, and PyTorch's
# ideep layer another LRU of its own: 1024 entries each by default. Prompts of every length and
# decode batches of every size never hit them again, so a bf16 run's memory grew by ~3 MB per new
# prompt length. 128 / 64 entries keep every shape of a forward pass and of consecutive decode steps
# (a 150-prompt greedy pass took the same time either way). Set either variable to override.
os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "128")
os.environ.setdefault("LRU_CACHE_CAPACITY", "64")
