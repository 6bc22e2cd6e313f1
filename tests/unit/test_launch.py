"""Multi-process fits on this CPU with gloo: the pipeline process launches the ranks with
`torchrun --standalone --nproc_per_node=2 -m rlrec.runtime.stage` (rlrec.runtime.launch), or as the tasks of a
submitit job (local processes here, SLURM tasks on a cluster), never with Lightning's own launcher. On `llm=tiny_random`: one adapter is written, 2 ranks × batch 1 train the same adapter as
1 process × batch 2, and the reference log-probs each rank computes on its shard, once gathered,
equal the single-process ones. A CTR fit on 2 ranks returns a trained model and whole-split metrics."""

from __future__ import annotations

import functools
import logging
import os

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file
from torch.utils.data import DataLoader

from rlrec.llm.data import PreferenceDataset
from rlrec.runtime import launch
from rlrec.runtime.launch import TrainerFactory
from rlrec.tasks.preference import PreferenceTask, train_preference
from tests.conftest import CONF
from tests.unit.launch_jobs import failing_job

LORA = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]}
TRAINER = {"_target_": "pytorch_lightning.Trainer", "accelerator": "cpu", "max_epochs": 1,
           "num_sanity_val_steps": 0, "enable_model_summary": False}  # fmt: skip


def factory(tmp_path, devices: int, via: str = "torchrun") -> TrainerFactory:
    node = {**TRAINER, "devices": devices, **({"strategy": "ddp"} if devices > 1 else {})}
    where = {"via": via, "dir": str(tmp_path / "launch"), "cluster": "local"}  # submitit: local processes
    return TrainerFactory(trainer=node, launch=where, threads=1)  # 2 ranks × 1 thread on 2 cores


def tiny_random(tmp_path):
    node = OmegaConf.load(CONF / "llm" / "tiny_random.yaml")
    node.cache_dir, node.seed = os.environ["RLREC_MODEL_CACHE"], 0  # the suite's converted tokenizer
    from hydra.utils import instantiate

    return instantiate(node)


def new_task(llm) -> PreferenceTask:
    task = PreferenceTask(llm, loss="sdpo", beta=0.5, lora=LORA, reference="current",
                          optimizer=functools.partial(torch.optim.AdamW, lr=1e-2, weight_decay=0.0))  # fmt: skip
    task.init_seed = 0
    return task


GROUPS = [
    {"prompt": f"user {i} likes", "chosen": f"film {i} with dragons", "rejected": [f"no {i}", f"maybe {i} later"]}
    for i in range(4)
]


def preference(batch_size: int):
    return OmegaConf.create({"max_prompt_len": 32, "max_completion_len": 16, "chat_template": False,
                             "num_negatives": None, "batch_size": batch_size, "accumulate_grad_batches": 1,
                             "max_epochs": 1, "val_checks": 1, "gradient_clip_val": None})  # fmt: skip


def reference_job(task: PreferenceTask, groups, P):
    """On every rank: the reference log-probs of all `groups` (each rank scores its shard, then gathers)."""
    ds = PreferenceDataset(groups, task.tokenizer, int(P.max_prompt_len), int(P.max_completion_len), False)
    task.precompute_reference(DataLoader(ds, batch_size=int(P.batch_size), collate_fn=ds.collate))
    return task.refs["train"], launch.world()


def test_two_ranks_write_one_adapter_equal_to_one_process_with_twice_the_batch(tmp_path):
    llm = tiny_random(tmp_path)
    two = tmp_path / "two" / "adapter"
    metrics, curve = train_preference(new_task(llm), GROUPS, preference(1), factory(tmp_path, 2), 0, None, two)
    written = sorted(p.parent for p in tmp_path.rglob("adapter_config.json"))
    assert written == [two]  # rank 0 alone published it
    assert len(curve) == 2 and "align/sdpo_loss" in metrics  # 4 groups / (2 ranks × batch 1)
    assert not (tmp_path / "launch").exists() or not any((tmp_path / "launch").iterdir())  # job files removed

    one = tmp_path / "one" / "adapter"
    task = new_task(llm)
    train_preference(task, GROUPS, preference(2), factory(tmp_path, 1), 0, None, one)
    a, b = load_file(two / "adapter_model.safetensors"), load_file(one / "adapter_model.safetensors")
    assert a.keys() == b.keys() and len(a) > 0
    init = new_task(llm)
    init.configure_model()
    start = {k.replace(".default", ""): v for k, v in init.model.state_dict().items() if "lora_" in k}
    moved = 0
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=0)
        moved += not torch.equal(a[k], start[k])
    assert moved == len(a)  # every LoRA matrix trained (B from zero, A by the second step)


@pytest.mark.parametrize("via", ["torchrun", "submitit"])
def test_reference_logps_computed_on_shards_and_gathered_equal_one_process(tmp_path, via):
    llm = tiny_random(tmp_path)
    groups = GROUPS + [{"prompt": "a longer prompt for user 9", "chosen": "x", "rejected": ["y", "zz"]}]
    (ref_c, ref_r), (rank, size) = launch.run(reference_job, new_task(llm), groups, preference(2),
                                              factory=factory(tmp_path, 2, via))  # fmt: skip
    assert (rank, size) == (0, 2)  # it ran on rank 0 of two
    (one_c, one_r), (_, single) = reference_job(new_task(llm), groups, preference(2))
    assert single == 1 and ref_c.shape == (5,) and ref_r.shape == (5, 2)
    torch.testing.assert_close(ref_c, one_c, atol=1e-5, rtol=0)
    torch.testing.assert_close(ref_r, one_r, atol=1e-5, rtol=0)


def test_ctr_fit_on_two_ranks_trains_and_reports_whole_split_metrics(tmp_path, tiny_prep):
    from hydra.utils import instantiate

    from rlrec.data.ctr import TensorBatches, ctr_tensors
    from rlrec.downstream.fit import build_model, fit
    from rlrec.tasks.ctr import CTRTask

    torch.manual_seed(0)
    model = build_model(instantiate(OmegaConf.load(CONF / "backbone" / "din.yaml")), tiny_prep.spec)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    train, valid = ctr_tensors(tiny_prep, "train"), ctr_tensors(tiny_prep, "valid")
    task = CTRTask(model, functools.partial(torch.optim.Adam, lr=1e-2))
    make = functools.partial(factory(tmp_path, 2), max_epochs=2)
    fitted = fit(make, task, TensorBatches(train, 32, shuffle=True), TensorBatches(valid, 64),
                 TensorBatches(valid, 64), monitor="val/auc", patience=2)  # fmt: skip
    assert 0.0 <= fitted.best <= 1.0 and fitted.metrics["val/auc"] == pytest.approx(fitted.best)
    changed = [k for k, v in fitted.model.state_dict().items() if not torch.equal(v, start[k])]
    assert changed, "the fit on the ranks came back untrained"
    # whole-split metrics: the ranks' shards gathered, so the same model scores the same here
    from rlrec.tasks.ctr import CTRTask as Eval

    check = Eval(fitted.model, functools.partial(torch.optim.Adam, lr=1e-2))
    here = factory(tmp_path, 1)(max_epochs=1).validate(check, TensorBatches(valid, 64), verbose=False)[0]
    assert here["val/auc"] == pytest.approx(fitted.metrics["val/auc"], abs=1e-5)
    assert here["val/logloss"] == pytest.approx(fitted.metrics["val/logloss"], abs=1e-5)


@pytest.mark.parametrize("via", ["torchrun", "submitit"])
def test_a_failing_rank_is_reported_with_its_own_error(tmp_path, via):
    with pytest.raises(RuntimeError, match="launched ranks failed") as e:
        launch.run(failing_job, factory=factory(tmp_path, 2, via))
    if via == "submitit":  # torchrun prints the ranks' tracebacks itself; submitit keeps them in files
        assert str(e.value).splitlines()[1].strip() == "rank 1: ValueError: no such column 'genre' on rank 1"


def test_a_multi_process_trainer_is_never_built_in_the_pipeline_process(tmp_path):
    with pytest.raises(RuntimeError, match="multi-process fit"):
        factory(tmp_path, 2)(max_epochs=1)
    assert factory(tmp_path, 2).world_size == 2 and factory(tmp_path, 1).world_size == 1
    with pytest.raises(ValueError, match="launch.via"):
        launch.launch(TrainerFactory(trainer={**TRAINER, "devices": 2}, launch={"via": "mpirun",
                                                                                 "dir": str(tmp_path)}),
                      reference_job, (), {})  # fmt: skip


def test_table_fits_log_under_their_own_version(tmp_path):
    """Fits an executor runs side by side write their CSV logs to folders of their own."""
    csv = {"_target_": "pytorch_lightning.loggers.CSVLogger", "save_dir": str(tmp_path), "name": "csv"}
    make = TrainerFactory(trainer={**TRAINER, "devices": 1}, loggers=[csv])
    a, b = (make(inner=False, log_version=v).logger for v in ("fit-a", "fit-b"))
    assert (a.version, b.version) == ("fit-a", "fit-b") and a.log_dir != b.log_dir
    assert make(inner=True).logger is None  # inner fits (feedback models, preference rounds) log nothing


def test_ranks_interleave_one_shuffled_order_so_their_batches_make_one_processs_batch(monkeypatch):
    from rlrec.data.ctr import TensorBatches
    from rlrec.runtime import launch as where

    rows = {"x": torch.arange(22)}
    one = [b["x"] for b in TensorBatches(rows, 6, shuffle=True, seed=5)]  # 1 process, batch 2 × 3
    ranks = []
    for rank in (0, 1):
        monkeypatch.setattr(where, "world", lambda rank=rank: (rank, 2))
        ranks.append([b["x"] for b in TensorBatches(rows, 3, shuffle=True, seed=5)])
    assert len(one) == len(ranks[0]) == len(ranks[1]) == 4  # 11 rows each: batches of 3, 3, 3, 2
    for k in range(4):  # the k-th batches of the two ranks are the single process's k-th batch
        assert sorted(torch.cat([ranks[0][k], ranks[1][k]]).tolist()) == sorted(one[k].tolist())
    assert not set(torch.cat(ranks[0]).tolist()) & set(torch.cat(ranks[1]).tolist())  # disjoint shares


def test_a_log_file_gets_progress_lines_while_long_work_runs(caplog, monkeypatch):
    """Where stderr is not a terminal, a bar logs while the work runs (not only at its end) and a
    Lightning fit logs its epoch, step, time left and loss: `every=0` makes every update long."""
    import pytorch_lightning as pl
    from torch.utils.data import DataLoader, TensorDataset

    from rlrec.runtime.console import LineBar
    from rlrec.runtime.launch import FitLines, TrainerFactory

    caplog.set_level(logging.INFO, logger="rlrec")
    bar = LineBar(4, "generate[hf]", "prompt", every=0)
    for _ in range(4):
        bar.update(1)
    bar.close()
    lines = [r.getMessage() for r in caplog.records]
    assert [ln.split(" in ")[0] for ln in lines] == [f"generate[hf]: {k}/4 prompt" for k in (1, 2, 3, 4)]
    assert all("s left" in ln for ln in lines[:3]) and "left" not in lines[3]

    class Tiny(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(2, 1)

        def training_step(self, batch, _):
            loss = self.layer(batch[0]).pow(2).mean()
            self.log("train/loss", loss)
            return loss

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    caplog.clear()
    monkeypatch.setenv("RLREC_PROGRESS", "0")  # a log file
    trainer = TrainerFactory(trainer={"_target_": "pytorch_lightning.Trainer", "accelerator": "cpu"})(max_epochs=2)
    fit_lines = [c for c in trainer.callbacks if isinstance(c, FitLines)]
    assert len(fit_lines) == 1
    fit_lines[0].every = 0
    data = DataLoader(TensorDataset(torch.randn(6, 2)), batch_size=2)
    trainer.fit(Tiny(), data)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("fit[Tiny]")]
    assert lines[0].startswith("fit[Tiny]: epoch 1/2, step 1/6, ") and "s left, train/loss " in lines[0]
    assert lines[-1].startswith("fit[Tiny]: epoch 2/2, step 6/6, ")
    monkeypatch.setenv("RLREC_PROGRESS", "1")  # a terminal: tqdm's bar, no lines
    trainer = TrainerFactory(trainer={"_target_": "pytorch_lightning.Trainer", "accelerator": "cpu"})(max_epochs=1)
    assert not [c for c in trainer.callbacks if isinstance(c, FitLines)]
