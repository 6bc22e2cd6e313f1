"""Jobs the launch tests hand to launched ranks. A rank unpickles a job by importing its module, so
these live in a module that imports only what they run (not the test module's transformers, peft
and Lightning)."""

from __future__ import annotations

from rlrec.runtime import launch


def failing_job():
    """Rank 1 raises before the collective; rank 0 then loses its peer inside it."""
    import torch.distributed as dist

    if launch.world()[0] == 1:
        raise ValueError("no such column 'genre' on rank 1")
    dist.all_gather_object([None, None], "x")
