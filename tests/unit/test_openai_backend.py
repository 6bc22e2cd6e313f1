"""The openai backend against small in-process OpenAI-compatible servers that record what they get:
one request per sample with that sample's seed, prompts spread over several servers, retries,
a clear error for a server that is down, a policy's LoRA adapter loaded once per server and named
in each request (vLLM's runtime LoRA loading), and the disk cache making reruns free. The in-process
vllm backend's requests are checked against a stand-in `vllm` module (the real engine is exercised
by tests/smoke/test_vllm_server.py, marked slow)."""

from __future__ import annotations

import http.server
import json
import socket
import sys
import threading
import types

import pytest

from rlrec.llm.backends import vllm as vllm_backend
from rlrec.llm.backends.openai import OpenAIBackend
from rlrec.llm.chat import chat_messages
from rlrec.llm.gencache import sample_seed
from rlrec.llm.generation import Generator, SamplingConfig
from rlrec.policy import Policy
from tests.conftest import JSONHandler


class FakeServer:
    """An OpenAI-compatible server on 127.0.0.1 (random port, own thread). Like vLLM it serves
    `base` plus the LoRA adapters loaded through /v1/load_lora_adapter; a text names the model that
    wrote it, the prompt and the seed."""

    def __init__(self, base: str = "base"):
        self.base, self.requests, self.fail_first, self.loaded = base, [], [], set()
        self.lock = threading.Lock()
        outer = self

        class Handler(JSONHandler, http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's naming)
                outer.answer(self)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def answer(self, h) -> None:
        body = json.loads(h.rfile.read(int(h.headers["Content-Length"])))
        with self.lock:
            self.requests.append({"path": h.path, "body": body, "auth": h.headers.get("Authorization")})
            code = self.fail_first.pop(0) if self.fail_first else None
        if code is not None:
            return self.send(h, code, {"error": "try later"})
        if h.path == "/v1/load_lora_adapter":
            name = body["lora_name"]
            if name in self.loaded:  # vLLM's words
                return self.send(h, 400, {"error": {"message": f"The lora adapter '{name}' has already been loaded."}})
            self.loaded.add(name)
            return self.send(h, 200, f"Success: LoRA adapter '{name}' added successfully.")
        if body["model"] not in {self.base, *self.loaded}:
            return self.send(h, 404, {"error": {"message": f"The model `{body['model']}` does not exist."}})
        if h.path.endswith("/chat/completions"):
            text = f"{body['model']}|{body['messages'][-1]['content']}|{body['seed']}"
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
        else:
            choice = {"index": 0, "text": f"{body['model']}|{body['prompt']}|{body['seed']}", "finish_reason": "length"}
        h.send_json({"choices": [choice], "usage": {"completion_tokens": 3}})

    @staticmethod
    def send(h, code: int, reply) -> None:
        data = (reply if isinstance(reply, str) else json.dumps(reply)).encode()
        h.send_response(code)
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)

    def sampled(self) -> list[dict]:
        return [r["body"] for r in self.requests if r["path"].endswith("completions")]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture()
def servers():
    made: list[FakeServer] = []
    yield lambda: made.append(FakeServer()) or made[-1]
    for s in made:
        s.close()


def seeds_of(prompt: str, seed: int, n: int, system: str | None = None) -> list[int]:
    """The per-sample seeds the Generator gives a chat prompt, as sent to servers."""
    key = json.dumps(chat_messages(prompt, system))
    return [sample_seed(seed, key, i) % 2**31 for i in range(n)]


def test_one_request_per_sample_with_its_own_seed_retried_and_cached(servers, tmp_path, monkeypatch):
    server = servers()
    monkeypatch.setenv("RLREC_TEST_KEY", "sk-test")
    server.fail_first = [503]  # retried with backoff
    gen = Generator(
        SamplingConfig.preset(backend="openai", base_url=server.url, api_key_env="RLREC_TEST_KEY", system="Be brief."),
        "base",
        None,
        "base@fake",
        tmp_path,
        backoff=0.01,
        progress=False,
    )
    out = gen.sample(["u1", "u2"], num_samples=3, temperature=0.8, top_p=0.9, max_new_tokens=32, seed=5)
    assert out == [[f"base|{u}|{s}" for s in seeds_of(u, 5, 3, "Be brief.")] for u in ("u1", "u2")]
    assert len({s for row in out for s in row}) == 6  # six distinct seeds
    bodies = server.sampled()
    assert len(bodies) == 1 + 6  # the failed try, then one request per sample
    assert all("n" not in b for b in bodies)  # llama.cpp ignores n: never rely on it
    r = server.requests[-1]
    assert r["path"] == "/v1/chat/completions" and r["auth"] == "Bearer sk-test"
    b = r["body"]
    assert b["model"] == "base" and b["max_tokens"] == 32 and b["temperature"] == 0.8 and b["top_p"] == 0.9
    assert b["messages"][0] == {"role": "system", "content": "Be brief."}
    assert gen.last_stats.new_tokens == 18 and gen.last_stats.backend_calls == 6

    before = len(server.requests)
    again = Generator(
        SamplingConfig.preset(backend="openai", base_url=server.url, api_key_env="", system="Be brief."),
        "base",
        None,
        "base@fake",
        tmp_path,
        progress=False,
    )
    assert again.sample(["u1", "u2"], num_samples=3, temperature=0.8, top_p=0.9, max_new_tokens=32, seed=5) == out
    assert len(server.requests) == before and again.last_stats.cached == 6  # a rerun asks nothing

    # a rerun that lost two samples asks for exactly those, with the same seeds
    assert again.sample(["u1", "u3"], num_samples=2, temperature=0.8, top_p=0.9, max_new_tokens=32, seed=5) == [
        out[0][:2],
        [f"base|u3|{s}" for s in seeds_of("u3", 5, 2, "Be brief.")],
    ]
    assert len(server.requests) == before + 2

    assert gen.greedy(["u4"], max_new_tokens=4)[0].startswith("base|u4|")
    assert server.requests[-1]["body"]["temperature"] == 0.0
    raw = Generator(
        SamplingConfig.preset(backend="openai", base_url=server.url, chat=False, api_key_env=""),
        "base",
        None,
        progress=False,
    )
    assert raw.sample(["p"], num_samples=2, max_new_tokens=4)[0][0].startswith("base|p|")
    assert server.requests[-1]["path"] == "/v1/completions" and server.requests[-1]["auth"] is None


def test_prompts_are_spread_over_servers_and_the_cache_ignores_which_served(servers, tmp_path):
    a, b = servers(), servers()
    cfg = SamplingConfig.preset(backend="openai", base_urls=[a.url, b.url], api_model="base", api_key_env="")
    prompts = [f"user {i}" for i in range(6)]
    gen = Generator(cfg, model_fingerprint="served", cache_dir=tmp_path, progress=False)
    texts = gen.sample(prompts, num_samples=2, seed=1)
    assert texts == [[f"base|{p}|{s}" for s in seeds_of(p, 1, 2)] for p in prompts]
    per_server = [{r["messages"][-1]["content"] for r in s.sampled()} for s in (a, b)]
    assert per_server == [set(prompts[0::2]), set(prompts[1::2])]  # a prompt's samples stay on one server
    assert len(a.sampled()) == len(b.sampled()) == 6

    swapped = SamplingConfig.preset(backend="openai", base_urls=[b.url, a.url], api_model="base", api_key_env="")
    policies = [Policy.frozen(None, c) for c in (cfg, swapped)]
    assert policies[0].base_key == policies[1].base_key  # the same servers in another order
    single = Policy.frozen(None, SamplingConfig.preset(backend="openai", base_url=a.url + "/", api_model="base"))
    assert single.base_key == f"openai:base@{a.url}"  # base_url stays a one-server shorthand
    again = Generator(swapped, model_fingerprint="served", cache_dir=tmp_path, progress=False)
    assert again.sample(prompts, num_samples=2, seed=1) == texts
    assert len(a.sampled()) + len(b.sampled()) == 12  # all cached


def test_a_server_that_is_down_fails_with_its_url_after_retries(servers):
    up = servers()
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        down = f"http://127.0.0.1:{s.getsockname()[1]}/v1"
    gen = Generator(
        SamplingConfig.preset(backend="openai", base_urls=[up.url, down], api_key_env=""),
        "base",
        None,
        backoff=0.001,
        max_retries=2,
        progress=False,
    )
    with pytest.raises(RuntimeError, match=rf"server at {down} did not answer .* after 3 tries"):
        gen.sample(["x", "y"], num_samples=1)


def test_client_errors_are_not_retried(servers):
    server = servers()
    server.fail_first = [400]
    gen = Generator(
        SamplingConfig.preset(), "base", backend=OpenAIBackend(server.url, "base", backoff=0.01), progress=False
    )
    with pytest.raises(RuntimeError, match=rf"{server.url}/chat/completions → 400"):
        gen.sample(["x"], num_samples=1)
    assert len(server.requests) == 1


def adapter_folder(path):
    path.mkdir(parents=True)
    (path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 8}))
    return path


def test_a_policy_adapter_is_loaded_once_per_server_and_named_in_requests(servers, tmp_path):
    a, b = servers(), servers()
    cfg = SamplingConfig.preset(backend="openai", base_urls=[a.url, b.url], api_model="base", api_key_env="",
                         num_samples=2, max_new_tokens=8)  # fmt: skip
    base = Policy(None, cfg, None, None, None, cache_dir=tmp_path / "gen")
    base.progress = False
    prompts = ["u1", "u2", "u3"]
    before = base.sample(prompts, seed=3)
    assert all(t.startswith("base|") for row in before for t in row)
    assert not any(r["path"].endswith("load_lora_adapter") for s in (a, b) for r in s.requests)

    seen = [len(s.sampled()) for s in (a, b)]
    folder = adapter_folder(tmp_path / "align" / "k1" / "adapter")
    aligned = base.with_adapter(folder, key="k1")
    aligned.progress = False
    after = aligned.sample(prompts, seed=3)
    assert after == [[t.replace("base|", "rlrec-k1|", 1) for t in row] for row in before]  # same seeds, adapter's texts
    for s in (a, b):
        loads = [r["body"] for r in s.requests if r["path"] == "/v1/load_lora_adapter"]
        assert loads == [{"lora_name": "rlrec-k1", "lora_path": str(folder.resolve())}]  # once per server
    assert {r["model"] for s, k in zip((a, b), seen) for r in s.sampled()[k:]} == {"rlrec-k1"}
    assert aligned.greedy(["u1"])[0].startswith("rlrec-k1|")

    # another process naming the same adapter: the servers answer "already loaded", which is fine
    other = Policy(None, cfg, None, None, None, cache_dir=tmp_path / "gen2", adapter=folder, key="k1")
    other.progress = False
    assert other.sample(prompts, seed=3) == after
    # a restarted server has lost the adapter: it is loaded again and the request retried
    a.loaded.clear()
    assert other.sample(["u9"], seed=3)[0][0].startswith("rlrec-k1|")


def test_a_full_fine_tune_is_refused_by_the_served_backends(tmp_path):
    cfg = SamplingConfig.preset(backend="openai", base_url="http://127.0.0.1:9/v1", api_model="base")
    folder = tmp_path / "full"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    policy = Policy(None, cfg, None, None, None, adapter=folder, key="k")
    with pytest.raises(ValueError, match="adapter_config.json"):
        policy.generator  # noqa: B018 (building it is the check)


def test_a_server_without_runtime_lora_loading_says_how_to_start_it(servers, tmp_path):
    server = servers()
    server.fail_first = [404]
    gen = Generator(
        SamplingConfig.preset(),
        "base",
        backend=OpenAIBackend(server.url, "base", adapter=("x", str(tmp_path))),
        progress=False,
    )
    with pytest.raises(RuntimeError, match="VLLM_ALLOW_RUNTIME_LORA_UPDATING=True"):
        gen.sample(["x"], num_samples=1)


# ----------------------------------------------------------------------------- vllm in process


class FakeLLM:
    """Records what rlrec asks of `vllm.LLM`; answers one output per prompt."""

    built: list[dict] = []

    def __init__(self, model, **kwargs):
        type(self).built.append({"model": model, **kwargs})
        self.calls = []

    def get_tokenizer(self):
        return None

    def generate(self, prompts, params, use_tqdm=True, lora_request=None):
        self.calls.append({"prompts": list(prompts), "params": params, "lora": lora_request})
        name = lora_request.lora_name if lora_request is not None else "base"
        out = types.SimpleNamespace(text=None, token_ids=[1, 2], finish_reason="stop")
        return [
            types.SimpleNamespace(outputs=[types.SimpleNamespace(**{**vars(out), "text": f"{name}|{p.seed}"})])
            for p in params
        ]


@pytest.fixture()
def fake_vllm(monkeypatch):
    vllm = types.ModuleType("vllm")
    vllm.LLM = FakeLLM
    vllm.SamplingParams = lambda **kw: types.SimpleNamespace(**kw)
    lora, request = types.ModuleType("vllm.lora"), types.ModuleType("vllm.lora.request")
    request.LoRARequest = lambda name, int_id, path: types.SimpleNamespace(lora_name=name, lora_int_id=int_id,
                                                                            lora_path=path)  # fmt: skip
    for mod in (vllm, lora, request):
        monkeypatch.setitem(sys.modules, mod.__name__, mod)
    monkeypatch.setattr(vllm_backend, "_ENGINES", {})
    monkeypatch.setattr(vllm_backend, "_LORA_IDS", {})
    FakeLLM.built = []
    return FakeLLM


def test_in_process_vllm_gets_a_lora_request_per_adapter_on_one_engine(fake_vllm, tmp_path):
    seen = {}
    for key in ("base", "k1", "k2"):
        adapter = None if key == "base" else (f"rlrec-{key}", str(adapter_folder(tmp_path / key)))
        gen = Generator(
            SamplingConfig.preset(backend="vllm", max_lora_rank=8, chat=False),
            "/models/smol",
            None,
            adapter=adapter,
            enable_lora=True,
            progress=False,
        )
        texts = gen.sample(["p", "q"], num_samples=2, seed=7)
        call = gen.backend.llm.calls[-1]
        seen[key] = call["lora"]
        assert [p.seed for p in call["params"]] == [sample_seed(7, p, i) % 2**31 for p in ("p", "q") for i in (0, 1)]
        assert texts[0][0] == f"{'base' if adapter is None else adapter[0]}|{call['params'][0].seed}"
    assert fake_vllm.built == [
        {"model": "/models/smol", "enable_prefix_caching": True, "enable_lora": True, "max_lora_rank": 8}
    ]  # one engine for the three rounds
    assert seen["base"] is None
    assert (seen["k1"].lora_name, seen["k1"].lora_path) == ("rlrec-k1", str(tmp_path / "k1"))
    assert seen["k1"].lora_int_id != seen["k2"].lora_int_id


def test_in_process_vllm_on_cpu_prefills_each_prompt_in_one_step(fake_vllm, monkeypatch):
    """vLLM's CPU build kills the engine when a seeded request's prefill is split into chunks."""
    platforms = types.ModuleType("vllm.platforms")
    platforms.current_platform = types.SimpleNamespace(is_cpu=lambda: True)
    monkeypatch.setitem(sys.modules, "vllm.platforms", platforms)
    Generator(SamplingConfig.preset(backend="vllm", chat=False), "/models/smol", None, progress=False)
    Generator(
        SamplingConfig.preset(backend="vllm", chat=False), "/models/smol", None, progress=False, max_model_len=1024
    )
    assert [
        (b["enable_chunked_prefill"], b["max_model_len"], b["max_num_batched_tokens"]) for b in fake_vllm.built
    ] == [(False, 4096, 4096), (False, 1024, 1024)]


def test_a_policy_passes_its_engine_args_to_in_process_vllm(fake_vllm, tmp_path, monkeypatch):
    """`sampling.engine_args` reach vLLM's engine (e.g. a GPU memory share that leaves room for training)."""
    from omegaconf import OmegaConf

    from rlrec.llm import loading

    monkeypatch.setattr(loading, "model_folder", lambda llm: tmp_path / "weights")
    llm = types.SimpleNamespace(fingerprint="w")
    cfg = SamplingConfig.preset(backend="vllm", engine_args={"gpu_memory_utilization": 0.4}, max_lora_rank=8)
    preference = OmegaConf.create({"task": {"lora": {"r": 8}}})
    policy = Policy(llm, cfg, preference, None, None, cache_dir=tmp_path / "gen")
    policy.progress = False
    policy.generator  # noqa: B018 (building it builds the engine)
    assert fake_vllm.built[-1]["gpu_memory_utilization"] == 0.4
    assert fake_vllm.built[-1]["enable_lora"] is True and fake_vllm.built[-1]["model"] == str(tmp_path / "weights")
