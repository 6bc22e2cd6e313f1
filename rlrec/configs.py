"""Where the config tree is. The checkout's top-level `conf/` is the source of truth; a wheel ships a
copy of it as the package data `rlrec/conf/` (setup.py maps it there), so `python -m rlrec.train`
and the `rlrec` command work from any directory with or without a checkout. A user's own configs
(datasets, models) extend it: `--config-dir DIR` or `hydra.searchpath=[file://DIR]`."""

from __future__ import annotations

from pathlib import Path

from rlrec.errors import ConfigError

_HERE = Path(__file__).resolve().parent


def conf_dir() -> Path:
    """The config tree this rlrec runs with: the installed package's copy, else the checkout's."""
    for candidate in (_HERE / "conf", _HERE.parent / "conf"):
        if (candidate / "train.yaml").is_file():
            return candidate
    raise FileNotFoundError(
        f"rlrec's config tree is missing: neither {_HERE / 'conf'} (an installed wheel) nor {_HERE.parent / 'conf'} "
        "(a checkout) holds train.yaml; reinstall rlrec"
    )


def validate(cfg) -> None:
    """Check the composed config before any stage runs (value ranges, paths that must exist,
    endpoints that must answer, combinations that cannot work); raise ConfigError on the first
    problem, so a user learns it in a second instead of when that stage starts."""
    from omegaconf import OmegaConf

    def get(key: str, default=None):
        v = OmegaConf.select(cfg, key, default=default)
        return default if v is None else v

    def need(ok: bool, key: str, expected: str) -> None:
        if not ok:
            raise ConfigError(f"{key}={OmegaConf.select(cfg, key)!r}: expected {expected}")

    def number(key: str, lo: float | None = None, hi: float | None = None, *, lo_open=False, expected: str = ""):
        v = OmegaConf.select(cfg, key)
        if v is None:
            return
        ok = isinstance(v, (int, float)) and not isinstance(v, bool)
        ok = ok and (lo is None or (v > lo if lo_open else v >= lo)) and (hi is None or v <= hi)
        need(
            ok, key, expected or f"a number {'>' if lo_open else '≥'} {lo}" + (f" and ≤ {hi}" if hi is not None else "")
        )

    number("sampling.temperature", 0, expected="a number ≥ 0 (0 = greedy)")
    number("sampling.top_p", 0, 1, lo_open=True, expected="a number in (0, 1]")
    number("sampling.num_samples", 1, expected="an integer ≥ 1 (N, the samples per prompt)")
    number("sampling.max_new_tokens", 1, expected="an integer ≥ 1")
    need(get("sampling.backend", "hf") in ("hf", "openai", "vllm"), "sampling.backend", "one of hf, openai, vllm")
    number("align.rounds", 0, expected="an integer ≥ 0 (T; 0 = the un-aligned policy only)")
    number("align.users", 1, expected="an integer ≥ 1")
    number("align.heldout_users", 0, expected="an integer ≥ 0 (0 = no held-out measure)")
    number("align.min_z", 0, expected="a number ≥ 0 (0 = keep every group)")
    number("align.min_gap", 0, expected="a number ≥ 0")
    number("align.dedup_threshold", 0, 1, lo_open=True, expected="a cosine in (0, 1], or null to keep all samples")
    number("preference.task.beta", 0, lo_open=True, expected="a number > 0")
    number("preference.task.optimizer.lr", 0, lo_open=True, expected="a learning rate > 0")
    if OmegaConf.select(cfg, "preference.pairs") is not None:
        need(
            get("preference.pairs") in ("best_vs_all", "best_vs_worst"),
            "preference.pairs",
            "best_vs_all (S-DPO) or best_vs_worst (DPO)",
        )
    number("feedback.ensemble", 1, expected="an integer ≥ 1 (the feedback members a reward averages)")
    number("threads", 1, expected="an integer ≥ 1")
    from rlrec.runtime.precision import CANONICAL

    need(
        str(get("trainer.precision", "auto")) in ("auto", *CANONICAL),
        "trainer.precision",
        "auto (measured per machine: rlrec/runtime/precision.py) or a Lightning precision: " + ", ".join(CANONICAL),
    )
    for key in ("dataset.path", "knowledge.source"):
        path = OmegaConf.select(cfg, key)
        need(path is None or Path(str(path)).expanduser().exists(), key, "an existing path")
    if get("knowledge.source") and get("align.rounds", 0) > 0 and "recommend" in str(get("downstream._target_", "")):
        raise ConfigError(
            "knowledge.source: feeds a CTR backbone or a re-ranker (downstream=ctr, rerank or kar), "
            f"not downstream {get('downstream._target_')}"
        )
    if uses_llm(cfg):
        source = str(get("llm.source", ""))
        looks_local = source.startswith(("/", "./", "../", "~"))
        need(
            not looks_local or Path(source).expanduser().exists(),
            "llm.source",
            "an existing model folder, an embedded:<package>, or a hub id",
        )
        if get("sampling.backend") == "openai":
            urls = list(get("sampling.base_urls") or []) or [get("sampling.base_url")]
            need(all(urls), "sampling.base_url", "the URL of an OpenAI-compatible server (or sampling.base_urls)")
            for url in urls:
                _answers(url)


def uses_llm(cfg) -> bool:
    """Whether the run loads or calls the policy LLM (not for a backbone alone or for files as knowledge)."""
    from omegaconf import OmegaConf

    if OmegaConf.select(cfg, "knowledge.source"):
        return False
    downstream = OmegaConf.select(cfg, "downstream") or {}
    variants = set(downstream.get("variants") or [])
    return "recommend" in str(downstream.get("_target_", "")) or bool(variants - {"base"})


def _answers(url: str, timeout: float = 5.0) -> None:
    """An OpenAI-compatible server answers GET {url}/models, or ConfigError naming the URL."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url.rstrip("/") + "/models", timeout=timeout):
            return
    except urllib.error.HTTPError:
        return  # it answered (an auth error is the server's to report with the request)
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        raise ConfigError(
            f"sampling.base_url={url!r}: no OpenAI-compatible server answers there ({reason}); "
            "start one (make vllm-serve) or fix the URL"
        ) from None
