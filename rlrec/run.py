"""A run has one fixed shape:

    prepare → [distill] → align (T ≥ 0 rounds) → evaluate

`downstream` (what the policy is asked, what a probe produces, the final table) and `feedback`
(how sampled texts are scored) are the two plug-in axes, both built by `instantiate`; nothing here
names a paper. A downstream that needs no policy (a backbone or re-ranker alone) skips the LLM.
"""

from __future__ import annotations

import logging

import torch
from hydra.utils import instantiate

from rlrec import loop
from rlrec.context import Context
from rlrec.feedback.ensemble import build_feedback
from rlrec.outputs.results import Round, RunResult
from rlrec.policy import Policy
from rlrec.runtime import artifacts, memory

log = logging.getLogger("rlrec")


def run(ctx: Context) -> RunResult:
    cfg = ctx.cfg
    torch.set_num_threads(int(cfg.threads))
    data = ctx.datamodule.describe()  # prepare
    downstream = instantiate(cfg.downstream)(ctx=ctx)
    rounds: list[Round] = []
    source = (cfg.get("knowledge") or {}).get("source")
    if source:  # bring your own knowledge: files in the export format, no LLM
        rounds.append(Round(0, "source", "files", downstream.from_files(source)))
    elif downstream.uses_policy:
        policy = Policy.from_context(ctx)
        policy.constrain = downstream.constraint  # e.g. RecLAIF: items from the candidates
        first = "round0"
        if cfg.get("distill") is not None:
            if downstream.zero_shot_row:  # the table shows the policy before distillation
                rounds.append(Round(-1, "zero_shot", policy.key, downstream.probe(policy, "zero_shot")))
                rounds[-1].metrics.update(rounds[-1].probe.metrics)
            policy = instantiate(cfg.distill)(ctx=ctx)(policy, downstream)
            first = "sft"
        feedback = build_feedback(cfg.feedback, ctx, downstream)
        gold = build_feedback(cfg.gold, ctx, downstream) if cfg.get("gold") is not None else None
        A = instantiate(cfg.align)
        rounds += loop.align(policy, feedback, downstream, ctx.store, ctx.encoder.encode, A, first, gold=gold)
        if first == "sft":
            next(r for r in rounds if r.t == 0).metrics.update(policy.training)
    table, metrics = downstream.evaluate(rounds)  # evaluate
    if rounds:  # every round's texts, vectors, pairs and adapter, in the export format
        prep = ctx.prep
        about = {
            "dataset": cfg.dataset.name,
            "encoder": (cfg.get("encoder") or {}).get("source"),
            "llm": llm_identity(cfg),
        }
        artifacts.write_run(ctx.output_dir / "artifacts", rounds, prep.user_ids, prep.item_ids, about)
    metrics.update(round_metrics(rounds))
    return RunResult(
        run=summary(cfg),
        metrics=metrics,
        table=table,
        rounds=[r.summary() for r in rounds if r.t > 0],
        stages=list(ctx.store.events),
        data=data,
        examples={r.name: dict(list(r.probe.texts.items())[:2]) for r in rounds},
        curves={r.name: r.curve for r in rounds if r.curve},
        memory=memory.summary(),
    )


def round_metrics(rounds: list[Round]) -> dict:
    """Flat metric keys of the rounds: `iter{t}/…` per preference round, `round0/…` and the
    distillation's metrics before them, `rounds_done`."""
    out: dict = {}
    for r in rounds:
        if r.t > 0:
            out.update({f"iter{r.t}/{k}": v for k, v in r.metrics.items()})
        elif r.t == 0:
            out.update({k: v for k, v in r.metrics.items() if k.startswith("distill/")})
            out.update({f"round0/{k}": v for k, v in r.metrics.items() if not k.startswith(("distill/", "eval/"))})
    if rounds:
        out["rounds_done"] = max([0] + [r.t for r in rounds if r.trained])
    return out


def llm_identity(cfg) -> dict | None:
    """The policy's LLM config, resolved, its cache folder absolute: what `rlrec.outputs.export --merge`
    loads the base weights of an adapter from, from any directory."""
    if cfg.get("llm") is None:
        return None
    from pathlib import Path

    from omegaconf import OmegaConf

    llm = OmegaConf.to_container(cfg.llm, resolve=True)
    if llm.get("cache_dir"):
        llm["cache_dir"] = str(Path(llm["cache_dir"]).resolve())
    return llm


def summary(cfg) -> dict:
    """The run's identity (the report groups runs by these)."""
    target = (cfg.downstream.get("model") or {}).get("_target_", "")
    return {
        "experiment": cfg.task_name,
        "dataset": cfg.dataset.name,
        "split": cfg.split.protocol + ("+guard" if cfg.split.leakage_guard else ""),
        "backbone": target.rsplit(".", 1)[-1].lower() if target else "llm",
        "seed": cfg.seed,
        "profile": cfg.get("profile_name", "custom"),
    }
