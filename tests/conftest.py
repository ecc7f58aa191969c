"""Hub-free fixtures: tiny random-config models and a word-level tokenizer built in-process."""

from __future__ import annotations

import os

# Before transformers / huggingface_hub are imported: they read offline mode once, at import. Set later, it is
# ignored and a hub id costs ~45 s of connection retries instead of failing at once.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# dtype="auto" means bfloat16 on CPUs with native bf16: the suite pins float32 so that its exact assertions hold on
# every machine (subprocesses inherit it); the bf16 path has its own tests with stated tolerances (test_dtype.py).
os.environ["MATSTEER_DTYPE"] = "float32"

import pytest  # noqa: E402
import torch  # noqa: E402
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers  # noqa: E402
from transformers import (  # noqa: E402
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

WORDS = (
    "q a : the a an is are was of to in and or not yes no it this that statement toxic true false "
    "what who why how where when which people person man woman old young muslim jewish christian "
    "paris france capital city sun moon water fire earth good bad kind cruel answer question can't "
    "unknown cannot be determined eat seeds watermelon grow stomach nothing happens you they he she ? . ,"
).split()


def make_tokenizer(padding_side: str = "left") -> PreTrainedTokenizerFast:
    """A word-level fast tokenizer (offsets supported) over a fixed vocabulary; unknown words -> <unk>."""
    specials = ["<pad>", "<unk>", "<s>", "</s>"]
    vocab = {tok: i for i, tok in enumerate(specials + sorted(set(WORDS)))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )
    fast.padding_side = padding_side
    return fast


def _tiny(arch: str, vocab_size: int) -> torch.nn.Module:
    torch.manual_seed(0)
    common = dict(vocab_size=vocab_size, pad_token_id=0, bos_token_id=2, eos_token_id=3)
    if arch == "llama":
        cfg = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
                          num_key_value_heads=2, max_position_embeddings=128, **common)
        model = LlamaForCausalLM(cfg)
    elif arch == "qwen2":
        cfg = Qwen2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
                          num_key_value_heads=2, max_position_embeddings=128, **common)
        model = Qwen2ForCausalLM(cfg)
    elif arch == "gpt2":
        cfg = GPT2Config(n_embd=32, n_layer=4, n_head=4, n_positions=128, **common)
        model = GPT2LMHeadModel(cfg)
    else:
        raise ValueError(arch)
    return model.eval()


ARCHS = ("llama", "qwen2", "gpt2")


@pytest.fixture(scope="session")
def tokenizer() -> PreTrainedTokenizerFast:
    return make_tokenizer()


@pytest.fixture(scope="session", params=ARCHS)
def tiny_model(request, tokenizer):
    """(arch name, model) for each tiny architecture."""
    return request.param, _tiny(request.param, len(tokenizer))


@pytest.fixture(scope="session")
def tiny_llama(tokenizer):
    return _tiny("llama", len(tokenizer))


def tiny_model_for(arch: str) -> torch.nn.Module:
    return _tiny(arch, len(make_tokenizer()))


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory, tokenizer):
    """A tiny Llama and its tokenizer saved as a local model folder (for the CLI and subprocesses)."""
    path = tmp_path_factory.mktemp("tiny-llama")
    tiny_model_for("llama").save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
