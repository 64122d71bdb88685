"""Shared fixtures: a tiny random Llama saved as a Hugging Face folder, the same loaded through
`sae.lm.load_model`, a tiny TransformerLens-native bridge, and a few KB of real text.

Everything is session-scoped and built offline in a couple of seconds, so tests never need
SmolLM2 (those that do are marked `slow`).
"""

from __future__ import annotations

import os
from pathlib import Path

# Tests never reach the hub; set before transformers / huggingface_hub read them at import.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Triton kernels run under the CPU interpreter in tests unless a GPU run sets TRITON_INTERPRET=0;
# the variable must be set before sae_kernels.triton_ops is imported.
os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

# The tiny models gain nothing from threads, and on shared cores OpenMP's spin-waiting makes a
# 2-thread forward of them up to 100x slower; one thread also makes results identical to those
# of subprocesses started with OMP_NUM_THREADS=1.
torch.set_num_threads(1)

from tests._data import CORPUS, REPO  # noqa: E402,F401

TINY_VOCAB = 512
TINY_LAYERS = 3
TINY_D_MODEL = 64
CHAT_TEMPLATE = (
    "{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}</s>\n{% endfor %}"
)


def _corpus_lines(n_bytes: int) -> list[str]:
    """Whole non-blank lines from the start of the bundled corpus, about n_bytes in all."""
    lines, total = [], 0
    with CORPUS.open(encoding="utf-8") as fh:
        for line in fh:
            if total >= n_bytes:
                break
            if line.strip():
                lines.append(line.rstrip("\n"))
                total += len(line)
    return lines


def make_tiny_tokenizer():
    """A byte-level BPE (512 tokens) trained on the corpus, with <pad>, <s>, </s> and a chat
    template, as a PreTrainedTokenizerFast."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TINY_VOCAB, special_tokens=["<pad>", "<s>", "</s>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    bpe.train_from_iterator(_corpus_lines(40_000), trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>",
                                  pad_token="<pad>")
    tok.chat_template = CHAT_TEMPLATE
    return tok


def save_tiny_llama(folder: Path, tokenizer, n_layers: int = TINY_LAYERS, seed: int = 0) -> Path:
    """Save a random LlamaForCausalLM (d_model 64, GQA 4/2 heads) plus `tokenizer` to `folder`."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=TINY_D_MODEL, intermediate_size=128,
        num_hidden_layers=n_layers, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=512, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """Path of a saved Hugging Face folder: random 3-layer Llama, d_model 64, vocab 512."""
    return save_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), make_tiny_tokenizer())


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_dir):
    """The tiny tokenizer as loaded back from `tiny_model_dir`."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir):
    """The tiny Llama as a `LoadedModel` through `sae.lm.load_model` (fp32, CPU)."""
    from sae.lm import load_model

    return load_model(str(tiny_model_dir))


@pytest.fixture(scope="session")
def tiny_native_model(tiny_tokenizer):
    """A TransformerLens-native 2-layer bridge (no HF model behind it) with the tiny tokenizer."""
    from transformer_lens.config import TransformerBridgeConfig
    from transformer_lens.model_bridge import TransformerBridge

    from sae.lm import from_bridge

    cfg = TransformerBridgeConfig(
        d_model=TINY_D_MODEL, d_head=16, n_heads=4, n_layers=2, n_ctx=256, d_mlp=128,
        d_vocab=len(tiny_tokenizer), act_fn="gelu", normalization_type="LN", seed=0,
    )
    bridge = TransformerBridge.boot_native(cfg, tokenizer=tiny_tokenizer)
    bridge.eval()
    return from_bridge(bridge, tiny_tokenizer, name="tiny-native")


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory) -> Path:
    """A .txt file with the first ~8 KB (whole lines) of the bundled WikiText-2 slice."""
    path = tmp_path_factory.mktemp("corpus") / "tiny.txt"
    path.write_text("\n".join(_corpus_lines(8_000)) + "\n", encoding="utf-8")
    return path
