"""Bad input is one line naming the key, the value and what was expected, before any stage runs;
exit code 2, no traceback, nothing already computed lost."""

from __future__ import annotations

import http.server
import os
import subprocess
import sys
import threading

import pytest
from hydra import compose, initialize_config_dir

from rlrec.configs import ConfigError, validate
from tests.conftest import CONF

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}


def _cfg(*overrides, experiment="trackrec_movielens"):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("train", overrides=[f"+experiment={experiment}", "output_dir=/tmp/x", *overrides])


@pytest.mark.parametrize(
    "override, message",
    [
        ("sampling.temperature=-1", r"sampling.temperature=-1: expected a number ≥ 0 \(0 = greedy\)"),
        ("sampling.top_p=0", r"sampling.top_p=0: expected a number in \(0, 1\]"),
        ("sampling.top_p=1.5", r"sampling.top_p=1.5: expected a number in \(0, 1\]"),
        ("sampling.num_samples=0", r"sampling.num_samples=0: expected an integer ≥ 1"),
        ("sampling.backend=tgi", r"sampling.backend='tgi': expected one of hf, openai, vllm"),
        ("align.rounds=-1", r"align.rounds=-1: expected an integer ≥ 0"),
        ("align.dedup_threshold=1.5", r"align.dedup_threshold=1.5: expected a cosine in \(0, 1\]"),
        ("preference.task.beta=0", r"preference.task.beta=0: expected a number > 0"),
        ("preference.task.optimizer.lr=-1", r"preference.task.optimizer.lr=-1: expected a learning rate > 0"),
        ("preference.pairs=best_vs_median", r"preference.pairs='best_vs_median': expected best_vs_all"),
        ("feedback.ensemble=0", r"feedback.ensemble=0: expected an integer ≥ 1"),
        ("llm.source=/nonexistent/model", r"llm.source='/nonexistent/model': expected an existing model folder"),
        ("knowledge.source=/nonexistent", r"knowledge.source='/nonexistent': expected an existing path"),
        ("dataset.path=/nonexistent", r"dataset.path='/nonexistent': expected an existing path"),
        ("sampling.backend=openai", r"sampling.base_url=None: expected the URL of an OpenAI-compatible server"),
    ],
)
def test_each_bad_value_is_named_with_what_was_expected(override, message):
    with pytest.raises(ConfigError, match=message):
        validate(_cfg(override))


def test_good_configs_pass_and_the_llm_is_checked_only_where_it_is_used():
    for experiment in ("trackrec_movielens", "dpo4rec_movielens", "reclaif_movielens", "kar_movielens"):
        validate(_cfg(experiment=experiment))
    validate(_cfg("llm.source=/nonexistent/model", experiment="backbone_only"))  # no LLM in this run
    validate(_cfg("sampling.temperature=0", "align.rounds=0"))


def test_an_openai_endpoint_must_answer():
    class Models(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if self.path == "/v1/models" else 404)
            self.end_headers()
            self.wfile.write(b'{"data": []}')

        def log_message(self, *a):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Models)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        up = f"http://127.0.0.1:{server.server_port}/v1"
        validate(_cfg("sampling.backend=openai", f"sampling.base_url={up}", "sampling.api_model=m"))
        with pytest.raises(ConfigError, match=r"sampling.base_url='http://127.0.0.1:9/v1': no OpenAI-compatible"):
            validate(_cfg("sampling.backend=openai", f"sampling.base_urls=[{up},http://127.0.0.1:9/v1]"))
    finally:
        server.shutdown()


def test_the_command_line_prints_one_line_and_exits_2_leaving_earlier_work(tmp_path):
    cache = tmp_path / "cache"
    (cache / "fit" / "k").mkdir(parents=True)
    (cache / "fit" / "k" / "result.json").write_text("{}")  # something a previous run computed
    for override, first_words in (
        ("sampling.temperature=-1", "ConfigError: sampling.temperature=-1"),
        ("dataset.no_such_key=x", None),  # Hydra's own error for a bad override stays Hydra's
    ):
        p = subprocess.run(
            [sys.executable, "-m", "rlrec.train", "+experiment=trackrec_movielens", override,
             f"cache_dir={cache}", f"hydra.run.dir={tmp_path}/run"],
            cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert p.returncode != 0
        if first_words:
            out = (p.stdout + p.stderr).strip().splitlines()
            assert p.returncode == 2 and len(out) == 1 and first_words in out[0], out
            assert "Traceback" not in p.stderr
    assert (cache / "fit" / "k" / "result.json").read_text() == "{}"
