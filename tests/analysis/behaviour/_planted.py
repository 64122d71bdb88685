"""A planted behaviour: a tiny Llama whose preference for answer "A" over "B" is carried by one
residual direction u, and an SAE at the middle layer whose latent PLANTED reads and writes u.

Construction (the test cannot pass by accident):
  - u, v: random orthonormal directions in the residual stream (d_model 64).
  - Embeddings: the prompt's last token ":" gets +S_PROMPT u; the answer token "A" gets +S u and
    "B" gets -S u; "A" also gets +S/2 v (a distractor that separates the two sides as well as u
    does but has no path to the answer logits).
  - Unembedding: the row of "A" is set to the row of "B" plus GAMMA u / g (g the final RMSNorm
    weight), so logit(A) - logit(B) is GAMMA times the u-component of the normalised final
    residual and nothing else: the behaviour (prefer "A") exists only through u.
  - SAE at blocks.1.hook_resid_post, ReLU, d_sae 64: latent PLANTED (index 37) has encoder and
    decoder u; latent DISTRACTOR (index 11) has v; the rest are random unit directions
    orthogonal to u and v with a negative bias so they fire sparsely.
The pipeline must rank PLANTED first (the distractor is as separable, so AUROC alone cannot
settle it; effect size and attribution do), steering it must move the margin monotonically,
and ablating it must remove the preference; the distractor must do neither.
"""

from __future__ import annotations

from pathlib import Path

import torch

PLANTED, DISTRACTOR = 37, 11
HOOK = "blocks.1.hook_resid_post"
S, S_PROMPT, GAMMA = 0.3, 0.15, 0.5
D_SAE = 64
N_ITEMS = 48
CORPUS = Path(__file__).resolve().parents[3] / "sae" / "_bundled" / "wikitext-2-valid.txt"


def directions(d: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(123)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=gen))
    u, v = q[:, 0], q[:, 1]
    rand_FD = torch.randn(D_SAE, d, generator=gen)
    rand_FD -= (rand_FD @ u)[:, None] * u + (rand_FD @ v)[:, None] * v
    return u, v, rand_FD / rand_FD.norm(dim=1, keepdim=True)


def planted_model_dir(folder, tokenizer, u, v):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                      pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False)
    torch.manual_seed(1)
    hf = LlamaForCausalLM(cfg)
    ids = {t: tokenizer(t, add_special_tokens=False)["input_ids"] for t in (":", "A", "B")}
    assert all(len(i) == 1 for i in ids.values()), ids
    colon, a, b = ids[":"][0], ids["A"][0], ids["B"][0]
    with torch.no_grad():
        emb = hf.model.embed_tokens.weight
        emb[colon] += S_PROMPT * u
        emb[a] += S * u + 0.5 * S * v
        emb[b] -= S * u
        g = hf.model.norm.weight
        hf.lm_head.weight[a] = hf.lm_head.weight[b] + GAMMA * u / g
    hf.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def planted_sae(u, v, rand_FD):
    from sae.config import SAEConfig
    from sae.model import SparseAutoencoder

    sae = SparseAutoencoder(SAEConfig(d_in=64, d_sae=D_SAE, activation="relu", hook_name=HOOK))
    W_dec = rand_FD.clone()
    W_dec[PLANTED], W_dec[DISTRACTOR] = u, v
    with torch.no_grad():
        sae.W_dec.copy_(W_dec)
        sae.W_enc.copy_(W_dec.t())
        sae.b_dec.zero_()
        sae.b_enc.fill_(-0.02)
        sae.b_enc[PLANTED] = 0.0
        sae.b_enc[DISTRACTOR] = 0.0
    return sae


def planted_dataset(corpus_lines: list[str]):
    from sae.analysis.behaviour.datasets import BehaviourDataset, BehaviourItem

    items = [BehaviourItem(id=str(i), prompt=f"{line[:60].strip()} Answer:", matching="A", not_matching="B",
                           chat=False) for i, line in enumerate(corpus_lines[:N_ITEMS])]
    return BehaviourDataset("planted", items)


def corpus_lines(n: int = N_ITEMS) -> list[str]:
    """The first `n` paragraph lines (over 70 characters, no headers) of the bundled corpus."""
    out = []
    with CORPUS.open(encoding="utf-8") as fh:
        for line in fh:
            if len(line) > 70 and not line.strip().startswith("="):
                out.append(line.strip())
            if len(out) == n:
                break
    return out
