"""Tiny random backbones and tiny data, built in the test session (no network, no ../shared)."""

from __future__ import annotations

import contextlib
import io
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import (
    AutoModelForSequenceClassification,
    BertConfig,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    RobertaConfig,
)

# What `train.mixed_precision: auto` means on a CPU is measured per machine (peftlab.backbones.precision);
# the suite's exact comparisons must not depend on which CPU runs them, so it computes in fp32
# (also in subprocesses, which inherit this). tests/test_precision.py exercises bf16 explicitly.
os.environ["PEFTLAB_CPU_PRECISION"] = "fp32"
os.environ["PEFTLAB_CPU_DROPOUT"] = "torch"  # exact comparisons must not depend on the CPU (tests/test_dropout.py covers bits)

WORDS = ["good", "great", "fine", "bad", "awful", "poor", "meh", "okay", "so", "the", "drug",
         "was", "it", "really", "not", "very", "pain", "sleep", "day", "a"]
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[EOS]"]


def make_tokenizer(path: Path, with_cls: bool) -> PreTrainedTokenizerFast:
    vocab = {t: i for i, t in enumerate(SPECIALS + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    if with_cls:
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", 2), ("[SEP]", 3)],
        )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]",
        **({"cls_token": "[CLS]", "sep_token": "[SEP]"} if with_cls else {"eos_token": "[EOS]"}),
    )
    fast.model_input_names = ["input_ids", "attention_mask"] + (["token_type_ids"] if with_cls else [])
    fast.save_pretrained(str(path))
    return fast


def tiny_config(family: str):
    v = len(SPECIALS) + len(WORDS)
    common = dict(vocab_size=v, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                  intermediate_size=64, pad_token_id=0, num_labels=3)
    if family == "bert":
        return BertConfig(max_position_embeddings=64, **common)
    if family == "roberta":
        return RobertaConfig(max_position_embeddings=70, type_vocab_size=1, **common)
    if family == "llama":
        return LlamaConfig(max_position_embeddings=64, num_key_value_heads=2, eos_token_id=4, bos_token_id=4, **common)
    raise ValueError(family)


FAMILIES = ["bert", "roberta", "llama"]


@pytest.fixture(scope="session")
def tiny_backbones(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Folder per family with random weights and a word-level tokenizer, like a hub checkpoint."""
    out = {}
    for family in FAMILIES:
        path = tmp_path_factory.mktemp(f"tiny-{family}")
        torch.manual_seed(0)
        model = AutoModelForSequenceClassification.from_config(tiny_config(family))
        model.save_pretrained(str(path))
        make_tokenizer(path, with_cls=family != "llama")
        out[family] = str(path)
    return out


@pytest.fixture(scope="session")
def tiny_bert(tiny_backbones: dict[str, str]) -> str:
    return tiny_backbones["bert"]


def tiny_rows(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """A learnable 3-class task: the label is which sentiment word the text contains."""
    rng = random.Random(seed)
    cue = {"positive": ["good", "great", "fine"], "negative": ["bad", "awful", "poor"], "neutral": ["meh", "okay", "so"]}
    filler = ["the", "drug", "was", "it", "really", "very", "pain", "sleep", "day", "a"]
    rows = []
    for i in range(n):
        label = ["positive", "negative", "neutral"][i % 3]
        words = rng.sample(filler, rng.randint(2, 8)) + [rng.choice(cue[label])]
        rng.shuffle(words)
        rows.append((" ".join(words), label))
    return rows


def write_csv(path: Path, rows: list[tuple[str, str]]) -> Path:
    """``rows`` as a text,label CSV at ``path`` (the tiny rows need no quoting)."""
    path.write_text("text,label\n" + "".join(f"{t},{l}\n" for t, l in rows), encoding="utf-8")
    return path


def write_tiny_csvs(root: Path, n_train: int = 48, n_eval: int = 24, eval_name: str = "eval.csv") -> tuple[Path, Path]:
    """The tiny task's train.csv (``tiny_rows(n_train, 1)``) and eval file (``tiny_rows(n_eval, 2)``) in ``root``."""
    return write_csv(root / "train.csv", tiny_rows(n_train, 1)), write_csv(root / eval_name, tiny_rows(n_eval, 2))


@pytest.fixture()
def tiny_csv(tmp_path: Path) -> tuple[Path, Path]:
    return write_tiny_csvs(tmp_path)


def save_tiny_causal_lm(path: Path, seed: int) -> str:
    """A random tiny Llama causal LM and its tokenizer in ``path``, like a hub checkpoint."""
    torch.manual_seed(seed)
    LlamaForCausalLM(tiny_config("llama")).save_pretrained(str(path))
    make_tokenizer(path, with_cls=False)
    return str(path)


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    """accelerate keeps one process-wide state; a CPU-forced test after a CUDA one needs it reset."""
    yield
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)


def run_cli_process(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """``python -m peftlab ...`` in a fresh interpreter: the real entry point, start-up and exit
    code, for the few end-to-end tests that must see them (~8 CPU-seconds each; prefer run_cli)."""
    return subprocess.run([sys.executable, "-m", "peftlab", *args], capture_output=True, text=True, timeout=timeout)


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """The CLI's own entry point (``peftlab.cli.main``) in this process: interpreter start-up and the
    torch/transformers imports cost ~8 CPU-seconds per subprocess, too much for many calls."""
    from peftlab.cli import main

    out, err, code = io.StringIO(), io.StringIO(), 0
    old_argv, old_env = sys.argv, dict(os.environ)
    sys.argv = ["peftlab", *args]
    os.environ.update(env or {})
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            main()
    except SystemExit as exc:
        code = int(exc.code or 0)
    finally:
        sys.argv = old_argv
        os.environ.clear()
        os.environ.update(old_env)
    return subprocess.CompletedProcess(list(args), code, out.getvalue(), err.getvalue())
