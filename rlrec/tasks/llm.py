"""LLMTask: what PreferenceTask and SFTTask share — lazy weights, LoRA (peft) or full
fine-tuning, the optimiser over trainable parameters, adapter saving, the policy for
generation."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch import nn

from rlrec.llm.loading import LLMConfig, load_model, load_tokenizer
from rlrec.llm.logps import completion_logps
from rlrec.runtime.precision import autocast_dtype, low_precision_weights


def _adamw(params):  # the default when no optimizer partial is given
    return torch.optim.AdamW(params, lr=1e-5)


class LLMTask(pl.LightningModule):
    """`llm` is an LLMConfig (weights load in `configure_model`, so instantiating is cheap) or an
    already loaded HF causal LM. `lora` = {r, alpha, dropout, target_modules} wraps it with a
    trainable peft adapter (the base stays frozen); `lora=None` trains every weight.
    `adapter_path` resumes from a saved adapter (an SFT adapter, the previous round's)."""

    def __init__(
        self,
        llm: LLMConfig | nn.Module,
        lora: Mapping | None = None,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        adapter_path: str | None = None,
        tokenizer=None,
        config: dict | None = None,
        frozen: bool = False,
    ):
        super().__init__()
        self.llm_config = llm if isinstance(llm, LLMConfig) else None
        self.lora = dict(lora) if lora is not None else None
        self.optimizer_factory = optimizer or _adamw
        self.adapter_path = adapter_path
        self._tokenizer = tokenizer
        self.config = config  # the resolved run config, stored in every checkpoint
        self.init_seed: int | None = (
            None  # seeds a new LoRA adapter's init wherever the weights load (a launched rank too)
        )
        self.frozen = frozen  # nothing of the model trains (Policy.frozen): its base weights can be shared
        self.model: nn.Module | None = None
        if isinstance(llm, nn.Module):
            self.model = self._wrap(llm)

    # --- model -----------------------------------------------------------------------------

    def _wrap(self, base: nn.Module) -> nn.Module:
        if self.adapter_path is not None:
            from peft import PeftModel

            assert self.lora is not None, "adapter_path needs lora settings (a LoRA run)"
            return PeftModel.from_pretrained(base, self.adapter_path, is_trainable=True)
        if self.lora is None:
            base.requires_grad_(True)
            return base
        from peft import LoraConfig, get_peft_model

        conf = LoraConfig(
            r=self.lora.get("r", 8),
            lora_alpha=self.lora.get("alpha", 16),
            lora_dropout=self.lora.get("dropout", 0.0),
            target_modules=list(self.lora.get("target_modules", ("q_proj", "k_proj", "v_proj", "o_proj"))),
            task_type="CAUSAL_LM",
        )
        return get_peft_model(base, conf)

    def configure_model(self) -> None:
        """Load and wrap the weights once (Lightning calls this at fit; so do the helpers below)."""
        if self.model is not None:
            return
        share = self.lora is not None or self.frozen  # frozen base weights: one copy per process
        base, self._tokenizer = load_model(self.llm_config, tokenizer=self._tokenizer, share=share)
        if self.init_seed is not None:
            torch.manual_seed(self.init_seed)
        self.model = self._wrap(base)
        trained = self.__dict__.pop("_trained", None)  # what a pickled copy carried (see __getstate__)
        if trained:
            unexpected = self.model.load_state_dict(trained, strict=False).unexpected_keys
            assert not unexpected, f"trained parameters the rebuilt model does not have: {unexpected[:3]}"

    def __getstate__(self) -> dict:
        """Pickled (a fit sent to launched ranks, or its result sent back), a task built from an
        LLMConfig carries only its trainable parameters (a LoRA adapter: a few MB): the frozen
        weights are reloaded from `llm_config` (+ `adapter_path`) where it is unpickled."""
        state = super().__getstate__()
        model = state["_modules"].get("model")
        if self.llm_config is not None and model is not None:
            state["_modules"] = {k: v for k, v in state["_modules"].items() if k != "model"}
            state["model"] = None
            state["_trained"] = {k: p.detach().cpu() for k, p in model.named_parameters() if p.requires_grad}
        return state

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            assert self.llm_config is not None, "a task built from a loaded model needs tokenizer="
            self._tokenizer = load_tokenizer(self.llm_config)
        return self._tokenizer

    @property
    def is_lora(self) -> bool:
        return self.lora is not None

    @property
    def policy(self) -> nn.Module:
        """The model as trained so far (adapter active), for `generate`; call `.eval()` first."""
        self.configure_model()
        return self.model

    def save_adapter(self, path: str | Path) -> Path:
        """The LoRA adapter (peft `save_pretrained`, a few MB), or the full model without LoRA;
        the tokenizer goes alongside so the folder is self-contained for generation."""
        self.configure_model()
        path = Path(path)
        self.model.save_pretrained(path)
        if self._tokenizer is not None:
            self._tokenizer.save_pretrained(path)
        return path

    def completion_logps(self, batch: dict) -> torch.Tensor:
        """Summed completion log-probs, one per row of the batch."""
        return completion_logps(
            self.model, batch["input_ids"], batch["attention_mask"], batch["completion_mask"], batch.get("labels")
        )

    # --- Lightning ---------------------------------------------------------------------------

    def configure_optimizers(self):
        params = [p for p in self.model.parameters() if p.requires_grad]
        assert params, "no trainable parameters"
        return self.optimizer_factory(params)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["rlrec_config"] = self.config


def frozen_weights_cast(task: nn.Module, trainer):
    """On a CPU Trainer under bf16 autocast, the frozen base weights (a LoRA fit's) cast to bf16 once
    for the block instead of on every forward and its recomputation (`low_precision_weights`; the
    same numerics). Elsewhere nothing changes (a GPU Trainer moves the module inside `fit`)."""
    on_cpu = trainer.strategy.root_device.type == "cpu"
    return low_precision_weights(task, autocast_dtype(str(trainer.precision)) if on_cpu else None, frozen_only=True)
