"""Every CTR backbone (parametrised over conf/backbone/*.yaml): shapes, gradients, padding
invariance, knowledge on/off, and that it can fit a tiny fixed batch."""

from __future__ import annotations

import functools

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from rlrec.knowledge.adapters import HybridExpertAdaptor, MLPConnector
from tests.conftest import CONF

BACKBONES = sorted(p.stem for p in (CONF / "backbone").glob("*.yaml"))


def build(name: str, spec, seed: int = 0, adapter=None, **overrides):
    cfg = OmegaConf.load(CONF / "backbone" / f"{name}.yaml")
    cfg = OmegaConf.merge(cfg, overrides)
    torch.manual_seed(seed)
    return instantiate(cfg)(features=spec, adapter=adapter)


def knowledge_batch(batch, spec, dim=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        **batch,
        "user_knowledge": torch.randn(len(batch["label"]), dim, generator=g),
        "item_knowledge": torch.randn(len(batch["label"]), dim, generator=g),
    }


@pytest.mark.parametrize("name", BACKBONES)
def test_shape_and_finite(name, tiny_prep, tiny_batch):
    model = build(name, tiny_prep.spec).eval()
    out = model(tiny_batch)
    assert out.shape == (len(tiny_batch["label"]),)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", BACKBONES)
@pytest.mark.parametrize("adapter", [None, "mlp", "hea"])
def test_gradients_reach_every_parameter(name, adapter, tiny_prep, tiny_batch):
    spec, batch, factory = tiny_prep.spec, tiny_batch, None
    if adapter:
        spec = spec.with_knowledge((12, 12))
        batch = knowledge_batch(tiny_batch, spec)
        factory = functools.partial(MLPConnector if adapter == "mlp" else HybridExpertAdaptor)
    model = build(name, spec, adapter=factory).train()
    out = model.forward_with_aux(batch)[0] if hasattr(model, "forward_with_aux") else model(batch)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(out, batch["label"])
    if hasattr(model, "forward_with_aux"):
        loss = loss + model.forward_with_aux(batch)[1]
    loss.backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert not dead, f"{name}: no gradient reaches {dead}"


@pytest.mark.parametrize("name", BACKBONES)
def test_history_padding_does_not_change_output(name, tiny_prep, tiny_batch):
    model = build(name, tiny_prep.spec).eval()
    padded = {**tiny_batch, "history": torch.nn.functional.pad(tiny_batch["history"], (0, 5))}
    assert tiny_batch["history"].gt(0).any(), "the fixture must have non-empty histories"
    with torch.no_grad():
        torch.testing.assert_close(model(tiny_batch), model(padded), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", BACKBONES)
def test_knowledge_changes_output_and_null_is_base(name, tiny_prep, tiny_batch):
    base = build(name, tiny_prep.spec, seed=7).eval()
    # an adapter factory without knowledge dims is never built: exactly the base model
    same = build(name, tiny_prep.spec, seed=7, adapter=functools.partial(MLPConnector)).eval()
    assert sum(p.numel() for p in base.parameters()) == sum(p.numel() for p in same.parameters())
    with torch.no_grad():
        torch.testing.assert_close(base(tiny_batch), same(tiny_batch))
    spec = tiny_prep.spec.with_knowledge((12, 12))
    model = build(name, spec, seed=7, adapter=functools.partial(MLPConnector, hidden=(16,))).eval()
    for p in model.parameters():  # default init makes tiny embeddings; make knowledge visible
        torch.nn.init.normal_(p, std=0.3) if p.dim() > 1 else None
    with torch.no_grad():
        a = model(knowledge_batch(tiny_batch, spec, seed=1))
        b = model(knowledge_batch(tiny_batch, spec, seed=2))
    assert not torch.allclose(a, b), f"{name}: knowledge vectors do not reach the output"


def test_a_gated_connector_starts_shut_and_learns_its_gate_first():
    """`gate=True`: every field is exactly zero at init, whatever the vectors; the first gradient
    reaches the gates only (the MLPs behind a shut gate get none); one step opens the gates."""
    torch.manual_seed(0)
    conn = MLPConnector((6, 4), embed_dim=3, hidden=(5,), gate=True)
    vectors = [torch.randn(8, 6), torch.randn(8, 4)]
    out = conn(vectors)
    assert out.shape == (8, 2, 3) and torch.equal(out, torch.zeros_like(out))
    target = torch.randn(8, 2, 3)
    ((out - target) ** 2).sum().backward()
    assert conn.gates.grad is not None and bool((conn.gates.grad != 0).all())
    assert all(p.grad is None or not p.grad.any() for p in conn.nets.parameters())
    with torch.no_grad():
        conn.gates -= 0.1 * conn.gates.grad
    # opened: field j is gate_j × MLP_j(vector_j), the ungated connector's field scaled
    ungated = MLPConnector((6, 4), embed_dim=3, hidden=(5,))
    ungated.nets.load_state_dict(conn.nets.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(conn(vectors), ungated(vectors) * conn.gates.view(1, 2, 1))


@pytest.mark.parametrize("name", BACKBONES)
def test_overfits_tiny_batch(name, tiny_prep, tiny_batch):
    model = build(name, tiny_prep.spec).train()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(300):
        out = model(tiny_batch)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(out, tiny_batch["label"])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if loss.item() < losses[0] / 2:
            break
    assert losses[-1] < losses[0] / 2, f"{name}: loss {losses[0]:.3f} → {losses[-1]:.3f} in {len(losses)} steps"


def test_dien_without_auxiliary_loss_never_runs_its_net(tiny_prep, tiny_batch):
    model = build("dien", tiny_prep.spec, aux_weight=0.0).train()
    calls = []
    model.aux_net.register_forward_hook(lambda *_: calls.append(1))
    logits, aux = model.forward_with_aux(tiny_batch)
    assert aux is None and calls == []  # α = 0: no auxiliary forward, nothing added to the loss
    torch.testing.assert_close(logits, model(tiny_batch))
    _, aux = build("dien", tiny_prep.spec, aux_weight=0.5).train().forward_with_aux(tiny_batch)
    assert aux is not None and aux.item() > 0  # α > 0: −log σ terms, positive


def test_fignn_without_self_attention_starts_the_graph_from_the_field_embeddings(tiny_prep, tiny_batch):
    model = build("fignn", tiny_prep.spec, self_attention=False).train()
    assert not any("self_attention" in n for n, _ in model.named_parameters())
    D, F = 16, model.embedding.num_fields(pool_history=True)
    assert model.w_in.shape == (F, D, D) and model.gru.hidden_size == D  # node states D wide, not heads x head_dim
    states = []
    model.gru.register_forward_hook(lambda m, args, out: states.append(args[1]))
    model(tiny_batch)
    fields = model.embedding(tiny_batch, pool_history=True)  # H¹: the GRU's first hidden state
    torch.testing.assert_close(states[0], fields.reshape(-1, D))
    loss = torch.nn.functional.binary_cross_entropy_with_logits(model(tiny_batch), tiny_batch["label"])
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


@pytest.mark.parametrize("name", BACKBONES)
def test_plain_forms_equal_the_fused_kernels_and_run_under_bf16_autocast(name, tiny_prep, tiny_batch, monkeypatch):
    """Under autocast (trainer.precision=bf16-mixed) every layer takes its plain form: in fp32 it
    must compute what the fused kernel computes (value and gradients), and under bf16 autocast the
    whole backbone must run forward and backward and give the fp32 logits to bf16's precision.
    Weights ~ N(0, 1.5² / fan_in) so the logits spread far beyond the biases (default init gives
    tiny embeddings: the logits are the output bias, and any interaction term could be lost)."""
    import rlrec.layers.attention
    import rlrec.layers.interaction
    import rlrec.layers.mlp

    def run(model):
        model.zero_grad()
        out = model(tiny_batch)
        out.float().square().mean().backward()
        return out.detach().float(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    model = build(name, tiny_prep.spec).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():  # matrices (…, out, in) and tables (rows, D): std 1.5/√in
            p.copy_(torch.randn(p.shape, generator=g) * (1.5 * p.shape[-1] ** -0.5 if p.dim() > 1 else 0.1))
    fused, fused_grads = run(model)
    for module in (rlrec.layers.mlp, rlrec.layers.interaction, rlrec.layers.attention):
        monkeypatch.setattr(module, "fused_ok", lambda x: False)
    plain, plain_grads = run(model)
    assert torch.allclose(plain, fused, atol=1e-5, rtol=1e-4), (plain - fused).abs().max()
    assert fused_grads.keys() == plain_grads.keys()
    for n, g in fused_grads.items():
        assert torch.allclose(plain_grads[n], g, atol=1e-5, rtol=1e-3), (name, n, (plain_grads[n] - g).abs().max())
    monkeypatch.undo()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low, low_grads = run(model)
    assert torch.isfinite(low).all() and low_grads.keys() == fused_grads.keys()
    # bf16 keeps 8 significant bits (ε = 2⁻⁸ ≈ 0.4%): rounding each layer's matmul output leaves the
    # logits within ~1% of their scale (measured 0.2–1.0% per backbone); a wrong cast or a missing
    # or extra scale under autocast moves them by far more
    tol = 2e-2 * fused.abs().max()
    assert fused.std() > 5 * tol, f"{name}: logits hardly vary ({fused.std():.3g}), the check is void"
    assert (low - fused).abs().max() <= tol, (name, (low - fused).abs().max(), tol)
