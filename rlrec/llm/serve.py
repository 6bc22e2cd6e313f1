"""Serve an LLM of the config tree with vLLM's OpenAI-compatible server, for `sampling.backend=openai`,
with LoRA adapters loadable at run time (each round's policy is loaded by name, see `OpenAIBackend`).

    make vllm-env                                  # once: vLLM's CPU build in .venv-vllm
    make vllm-serve                                # the embedded SmolLM2 on http://127.0.0.1:8000/v1
    python -m rlrec.llm.serve llm=smollm2_135m --port 8001 --name smollm2 [--print]
    python -m rlrec.train +experiment=trackrec_movielens sampling.backend=openai \\
        sampling.base_urls=[http://127.0.0.1:8000/v1] sampling.api_model=smollm2

vLLM lives in its own virtualenv (`RLREC_VLLM_PYTHON`, default `.venv-vllm/bin/python` in the
repository): it pins its own transformers. This process only writes the model's HF folder (the
embedded GGUF is dequantised once under `cache_dir/models`) and runs the server on it.

Flags that matter on the CPU build: chunked prefill is off and a step's token budget covers a whole
prompt, because a seeded request whose prefill is split kills the engine there ("CPU Generator does
not use offset": vLLM rewinds the discarded chunk's generator offset, which CPU generators lack;
measured with a 770-token prompt and a 256-token step budget). With these flags per-request seeds
work and reruns give the same texts (tests/smoke/test_vllm_server.py).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from rlrec.configs import conf_dir

ROOT = Path(__file__).resolve().parents[2]


def vllm_python() -> Path:
    return Path(os.environ.get("RLREC_VLLM_PYTHON", ROOT / ".venv-vllm" / "bin" / "python"))


def server_command(
    folder: str | Path,
    port: int = 8000,
    name: str = "smollm2",
    host: str = "127.0.0.1",
    max_lora_rank: int = 16,
    max_loras: int = 4,
    max_model_len: int = 2048,
    seed: int = 0,
    python: str | Path | None = None,
) -> tuple[list[str], dict]:
    """(argv, environment) of a vLLM server on `folder` with runtime LoRA loading."""
    argv = [
        str(python or vllm_python()),
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(folder),
        "--served-model-name",
        name,
        "--host",
        host,
        "--port",
        str(port),
        "--dtype",
        "float32",  # the CPU has no fast bf16 path on every machine of this kind; fp32 is the reference
        "--max-model-len",
        str(max_model_len),
        "--no-enable-chunked-prefill",
        "--max-num-batched-tokens",
        str(max_model_len),  # see the module doc
        "--enable-lora",
        "--max-lora-rank",
        str(max_lora_rank),
        "--max-loras",
        str(max_loras),
        "--seed",
        str(seed),
    ]
    env = {
        **os.environ,
        "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True",  # enables POST /v1/load_lora_adapter
        # GiB of KV cache: a small model at 2,048 tokens needs little
        "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "2"),
    }
    return argv, env


def embedded_folder(overrides: list[str]) -> Path:
    """The HF folder of `cfg.llm` (the embedded SmolLM2 by default), written once."""
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from rlrec.llm.loading import model_folder

    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    folder = model_folder(instantiate(cfg.llm))
    if not isinstance(folder, Path):
        raise SystemExit(f"llm={cfg.llm.name} is a hub id ({folder}): serve a local one (llm.source=/path)")
    return folder.resolve()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m rlrec.llm.serve", description=__doc__.split("\n\n")[0])
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. llm=smollm2_135m")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--name", default="smollm2", help="the served model name (sampling.api_model)")
    parser.add_argument("--max-lora-rank", type=int, default=16)
    parser.add_argument("--print", action="store_true", help="print the command instead of running it")
    args = parser.parse_args(argv)
    folder = embedded_folder(args.overrides)
    cmd, env = server_command(folder, args.port, args.name, args.host, args.max_lora_rank)
    if args.print:
        print(" ".join(cmd))
        return 0
    if not Path(cmd[0]).exists():
        raise SystemExit(f"no vLLM python at {cmd[0]}: run `make vllm-env` (or set RLREC_VLLM_PYTHON)")
    os.execve(cmd[0], cmd, env)  # the server replaces this process: Ctrl-C / kill reach vLLM directly


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
