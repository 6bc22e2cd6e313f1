"""The shared objects of a run, each built once and lazily through `instantiate`: the config, the
artifact store, the DataModule, the text encoder, the LLM config, a Trainer factory from
`cfg.trainer` (every fit of the run gets its Trainer here, so `trainer=gpu` reaches all of them),
the device the LLM lives on, and the seed."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from rlrec.runtime import precision
from rlrec.runtime.launch import TrainerFactory
from rlrec.runtime.store import Store

DISPLAY = ("enable_progress_bar", "enable_model_summary", "log_every_n_steps", "default_root_dir")


class Context:
    def __init__(self, cfg: DictConfig, output_dir: str | Path):
        self.cfg = cfg
        self.output_dir = Path(output_dir)
        self.seed = int(cfg.seed)
        self.reuse = bool(cfg.get("use_cache", True))
        self.store = Store(Path(cfg.cache_dir), reuse=self.reuse)
        self.memo: dict = {}  # derived objects built once per run by the modules that own them

    @cached_property
    def datamodule(self):
        dm = instantiate(self.cfg.dataset)
        dm.setup()
        return dm

    @property
    def prep(self):
        return self.datamodule.prep

    @property
    def data_key(self) -> str:
        return self.datamodule.fingerprint

    @cached_property
    def encoder(self):
        # use_cache=false: an in-memory vector cache, so every vector of this run is recomputed
        return instantiate(self.cfg.encoder, **({} if self.reuse else {"cache_dir": None}))

    @cached_property
    def llm(self):
        return instantiate(self.cfg.llm)

    @property
    def generation_cache(self) -> Path | None:
        """Where generated texts are cached (None with use_cache=false: every text is regenerated)."""
        return Path(self.cfg.cache_dir) / "generations" if self.reuse else None

    @cached_property
    def device(self) -> torch.device:
        """The device of `cfg.trainer.accelerator`: where the LLM is loaded for sampling."""
        acc = str(self.cfg.trainer.get("accelerator", "cpu"))
        if acc in ("gpu", "cuda", "auto") and torch.cuda.is_available():
            return torch.device("cuda")
        if acc == "mps" and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")

    def trainer_node(self, workload: str = "ctr") -> dict:
        """`cfg.trainer` resolved for a workload (`ctr`: backbones, re-rankers, feedback models,
        SASRec; `llm`: preference and SFT fits): `precision: auto` becomes this machine's measured
        choice for it (`rlrec.runtime.precision`)."""
        key = f"trainer_node/{workload}"
        if key not in self.memo:
            node = OmegaConf.to_container(self.cfg.trainer, resolve=True)
            node["precision"] = precision.resolve(
                node.get("precision", "32-true"), workload, node.get("accelerator", "cpu")
            )
            self.memo[key] = node
        return dict(self.memo[key])

    @property
    def trainer_key(self) -> dict:
        """What of `cfg.trainer` can change a CTR / re-rank fit's result (everything but display
        settings, precision resolved): part of every such fit's stage key. Under bf16 it also says
        that the fit's validation and test forwards ran in fp32 (`rlrec.runtime.precision.full_precision`),
        so fits scored on bf16 outputs by earlier versions are not reused (fp32 keys are unchanged)."""
        key = {k: v for k, v in self.trainer_node("ctr").items() if k not in DISPLAY}
        if precision.is_bf16(key.get("precision", "")):
            key["eval_precision"] = "32-true"
        return key

    @property
    def llm_trainer_key(self) -> dict:
        """`trainer_key` of the LLM fits (preference rounds, SFT, an LLM validator)."""
        return {k: v for k, v in self.trainer_node("llm").items() if k not in DISPLAY}

    @property
    def llm_precision(self) -> str:
        """The LLM workload's resolved precision: the preference / SFT Trainers' and the sampler's."""
        return self.trainer_node("llm")["precision"]

    @cached_property
    def trainer(self) -> TrainerFactory:
        """Builds every CTR / re-rank Trainer of the run from `cfg.trainer`: `ctx.trainer(inner=True,
        max_epochs=, callbacks=, progress=, **kw)` (see `TrainerFactory`). Picklable, so a
        multi-process fit (`trainer.devices > 1`) takes it to its launched ranks (`cfg.launch`,
        `rlrec.runtime.launch`). `ctx.llm_trainer` is the same for the LLM fits (their own precision)."""
        return self._factory("ctr")

    @cached_property
    def llm_trainer(self) -> TrainerFactory:
        return self._factory("llm")

    def _factory(self, workload: str) -> TrainerFactory:
        return TrainerFactory(
            trainer=self.trainer_node(workload),
            callbacks=_plain(self.cfg.get("callbacks")) or {},
            loggers=_plain(self.cfg.get("logger")) or [],
            launch=_plain(self.cfg.get("launch")) or {},
            threads=int(self.cfg.get("threads", 1)),
        )

    @cached_property
    def executor(self):
        """Where the many small independent fits run (`cfg.executor`, `rlrec.runtime.executor`): serial,
        joblib, submitit."""
        from rlrec.runtime.executor import Serial

        node = self.cfg.get("executor")
        return instantiate(node) if node is not None else Serial()

    def node(self, key: str) -> DictConfig:
        """A config node as a standalone resolved copy (e.g. a model factory to instantiate)."""
        return OmegaConf.create(OmegaConf.to_container(OmegaConf.select(self.cfg, key), resolve=True))


def _plain(node):
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node
