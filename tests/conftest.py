"""Shared fixtures: tiny models built from a config (no download), a word-level tokenizer whose
ICL names are single tokens, quiet logging."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach a model hub

REPO = Path(__file__).resolve().parents[1]


def _word_tokenizer(folder: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from ie_flow.corpora.icl import CATEGORIES

    words = ["[UNK]", "<s>", ",", ".", ":", ";", "?", "-", "the", "a", "cat", "sat", "on", "mat", "is", "and"]
    words += [n for names in CATEGORIES.values() for n in names if n not in words]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", bos_token="<s>").save_pretrained(folder)


def make_tiny_model(folder: Path, arch: str = "llama", seed: int = 0, layers: int = 2, hidden: int = 32,
                    heads: int = 4) -> Path:
    """A random causal LM of `arch` saved as a normal HF folder (config + weights + tokenizer)."""
    import torch
    import transformers

    folder.mkdir(parents=True, exist_ok=True)
    _word_tokenizer(folder)
    vocab = len(transformers.AutoTokenizer.from_pretrained(folder))
    if arch == "llama":
        config = transformers.LlamaConfig(
            vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
            num_attention_heads=heads, num_key_value_heads=heads // 2, max_position_embeddings=64, bos_token_id=1,
        )
    elif arch == "gpt2":
        config = transformers.GPT2Config(vocab_size=vocab, n_embd=hidden, n_layer=layers, n_head=heads, n_positions=64,
                                        bos_token_id=1, eos_token_id=1)
    else:
        raise ValueError(arch)
    torch.manual_seed(seed)
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("models") / "tiny-llama", "llama")


@pytest.fixture(scope="session")
def wide_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Boundaries wider than the Gaussian estimator's 128 dimensions per side."""
    return make_tiny_model(tmp_path_factory.mktemp("models") / "wide-llama", "llama", layers=1, hidden=160)


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("models") / "tiny-gpt2", "gpt2")


@pytest.fixture(scope="module")
def one_torch_thread():
    """Small estimator problems: one torch thread is as fast, and far faster when other test
    processes share this 2-core machine (two OpenMP threads there ran 5-10x slower)."""
    import torch

    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)
