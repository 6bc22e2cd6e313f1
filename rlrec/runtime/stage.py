"""The stage entry point a launcher starts on every rank: `python -m rlrec.runtime.stage <job.pt>`.

    torchrun --standalone --nproc_per_node=2 -m rlrec.runtime.stage job.pt    # this machine
    srun --nodes=2 --ntasks-per-node=4 python -m rlrec.runtime.stage job.pt   # a SLURM allocation
    (submitit calls `rlrec.runtime.stage.main(job)` on every task)

A job (written by `rlrec.runtime.launch.run`) is a module-level function with its arguments. Each rank joins
the process group (gloo on CPU, nccl on GPU) from the launcher's environment, runs the function —
its Lightning Trainer sees that environment and starts no process itself — and rank 0 writes the
return value to `result.pt` beside the job, atomically.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist


def _environment() -> None:
    """RANK / WORLD_SIZE / LOCAL_RANK / LOCAL_WORLD_SIZE / MASTER_ADDR / MASTER_PORT from whichever
    launcher started this process (torchrun sets them; srun and submitit set their own)."""
    if "RANK" in os.environ and "MASTER_ADDR" in os.environ:  # torchrun
        os.environ.setdefault("GROUP_RANK", os.environ.get("NODE_RANK", "0"))
        return
    try:
        import submitit

        submitit.JobEnvironment()  # raises outside a submitit job
        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    except (ImportError, RuntimeError):
        from lightning_fabric.plugins.environments import SLURMEnvironment

        if not SLURMEnvironment.detect():
            raise RuntimeError(
                "rlrec.runtime.stage runs under a launcher (torchrun, srun, submitit): none of their environments is set"
            ) from None
        env = SLURMEnvironment()
        os.environ.update(
            RANK=str(env.global_rank()),
            WORLD_SIZE=str(env.world_size()),
            LOCAL_RANK=str(env.local_rank()),
            MASTER_ADDR=env.main_address,
            MASTER_PORT=str(env.main_port),
        )
    nodes = int(os.environ.get("SLURM_NNODES", 1))
    os.environ.setdefault("LOCAL_WORLD_SIZE", str(int(os.environ["WORLD_SIZE"]) // max(1, nodes)))
    os.environ.setdefault("GROUP_RANK", str(int(os.environ["RANK"]) // int(os.environ["LOCAL_WORLD_SIZE"])))


def main(path: str | Path) -> None:
    path = Path(path)
    os.environ["RLREC_IN_RANK"] = "1"
    _environment()
    job = torch.load(path, map_location="cpu", weights_only=False)
    torch.set_num_threads(int(job.get("threads", 1)))
    gpu = job.get("accelerator") in ("gpu", "cuda", "auto") and torch.cuda.is_available()
    if gpu:
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if gpu else "gloo")
    try:
        out = job["fn"](*job["args"], **job["kwargs"])
        if dist.get_rank() == 0:
            tmp = path.with_name("result.pt.partial")
            torch.save(out, tmp)
            tmp.rename(path.with_name("result.pt"))
        dist.barrier()
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m rlrec.runtime.stage <job.pt>  (started by torchrun / srun / submitit)")
    main(sys.argv[1])
