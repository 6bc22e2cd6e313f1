"""Constrained decoding for RecLAIF's answers: rlrec's token automaton (`rlrec/llm/constrain.py`)
against xgrammar (the structured-generation engine vLLM uses) on the same questions and tokens.

    python benchmarks/constrained.py --threads 2                 # rlrec side + end-to-end cost
    pip install --no-deps --target benchmarks/.xgrammar xgrammar apache-tvm-ffi
    python benchmarks/constrained.py --threads 2                 # adds the xgrammar side

1. End to end: the embedded SmolLM2 samples `--prompts` real `reclaif_movielens` questions × N
   with and without the constraint (same seeds, prefix-sharing sampler): tokens/s and validity.
2. Per step: the constrained samples' token ids are replayed through each engine (rlrec: `allowed`
   + mask + `advance`; xgrammar: `fill_next_token_bitmask` + `apply_token_bitmask_inplace` +
   `accept_token` on a matcher compiled from the constraint's regex), timing the per-token cost and
   each engine's per-question set-up (compile). xgrammar also checks that it accepts the samples
   whose header is the forced one (the regex and the automaton agree).
Prints the date, commit and CPU model with the numbers.
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks" / ".xgrammar"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=160)
    args = ap.parse_args()
    from ctr_peer import cpu_model, git_commit  # lscpu's model with its bf16 flags; the commit

    torch.set_num_threads(args.threads)

    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from rlrec.context import Context
    from rlrec.llm.constrain import apply_constraints
    from rlrec.llm.generation import Generator, SamplingConfig
    from rlrec.policy import Policy

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["+experiment=reclaif_movielens", "output_dir=/tmp/bench_constrained"])
    ctx = Context(cfg, "/tmp/bench_constrained")
    down = instantiate(cfg.downstream)(ctx=ctx)
    users = [int(u) for u in down.train_users[: args.prompts]]
    prompts = [down.questions[u] for u in users]
    specs = [down.constraint(p) for p in prompts]
    policy = Policy.from_context(ctx)
    tok = policy.tokenizer
    gen = Generator(
        SamplingConfig.preset(), policy.task.policy.eval(), tok, progress=False
    )  # no cache: every sample is generated
    V = policy.task.policy.get_output_embeddings().weight.shape[0]
    stop = gen.backend.stop_ids

    def valid(u: int, text: str) -> bool:
        return down.valid_answer(u, text)

    kw = dict(num_samples=args.samples, temperature=1.0, top_p=0.95, max_new_tokens=args.max_new_tokens, seed=7)
    rows = {}
    for name, cons in (("free", None), ("constrained", specs)):
        t0 = time.perf_counter()
        recs = gen.sample_records(prompts, **kw, constraints=cons)
        sec = time.perf_counter() - t0
        toks = sum(s.n_tokens for r in recs for s in r)
        ok = np.mean([valid(u, s.text) for u, r in zip(users, recs) for s in r])
        rows[name] = (toks / sec, ok, recs)
        print(f"{name:12s} {toks / sec:7.1f} tok/s  validity {ok:.3f}  ({toks} tokens in {sec:.1f} s)")
    print(f"ratio_constrained_vs_free_tok_s: {rows['constrained'][0] / rows['free'][0]:.3f}")

    # replay the constrained samples' tokens through each engine
    seqs = []  # (spec index, token ids)
    for i, r in enumerate(rows["constrained"][2]):
        for s in r:
            seqs.append((i, tok(s.text, add_special_tokens=False)["input_ids"] + [stop[0]]))
    t0 = time.perf_counter()
    decoders = [s.compile(tok, V, stop, args.max_new_tokens) for s in specs]
    rl_setup = (time.perf_counter() - t0) / len(specs)
    logits = torch.zeros(1, V)
    steps, t_rl, replay_ok = 0, 0.0, 0
    for i, ids in seqs:
        st = decoders[i].start()
        t0 = time.perf_counter()
        good = True
        for t in ids:
            steps += 1
            apply_constraints(logits.zero_(), [st])
            if not torch.isfinite(logits[0, t]):  # re-tokenising can spell a title otherwise
                good = False
                break
            st.advance(t)
        t_rl += time.perf_counter() - t0
        replay_ok += good
    print(f"rlrec       setup {rl_setup * 1e3:7.1f} ms/question   {t_rl / steps * 1e6:7.1f} µs/token   "
          f"re-tokenised samples the automaton accepts: {replay_ok}/{len(seqs)}")  # fmt: skip
    try:
        import xgrammar as xgr
    except ImportError:
        print("xgrammar: not installed (see the docstring); its side is skipped")
        return
    info = xgr.TokenizerInfo.from_huggingface(tok, vocab_size=V, stop_token_ids=list(stop))
    compiler = xgr.GrammarCompiler(info)
    t0 = time.perf_counter()
    compiled = [compiler.compile_regex(s.regex()) for s in specs]
    xg_setup = (time.perf_counter() - t0) / len(specs)
    bitmask = xgr.allocate_token_bitmask(1, V)
    t_xg, steps, accepted, eligible = 0.0, 0, 0, 0
    for i, ids in seqs:
        text = tok.decode(ids[:-1])
        if specs[i].header not in text:
            continue  # the model wrote its own header: the regex asks for the forced one
        eligible += 1
        m = xgr.GrammarMatcher(compiled[i])
        t0 = time.perf_counter()
        good = True
        for t in ids:
            steps += 1
            m.fill_next_token_bitmask(bitmask)
            xgr.apply_token_bitmask_inplace(logits.zero_(), bitmask)
            if not m.accept_token(t):
                good = False
                break
        t_xg += time.perf_counter() - t0
        accepted += good
    print(f"xgrammar    setup {xg_setup * 1e3:7.1f} ms/question   {t_xg / max(steps, 1) * 1e6:7.1f} µs/token   "
          f"samples with the forced header it accepts: {accepted}/{eligible}")  # fmt: skip
    print(f"{date.today()} commit {git_commit()} · {cpu_model()} · {args.threads} threads · "
          f"{len(prompts)} questions × {args.samples} samples × ≤ {args.max_new_tokens} tokens")  # fmt: skip


if __name__ == "__main__":
    main()
