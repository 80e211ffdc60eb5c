"""Tiny random CLIP and ViT checkpoints and a tiny coloured-square image folder, built in the test."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

CLASSES = ["cat", "dog", "car"]
#: each class is a dominant colour, so even a random backbone's features separate them somewhat
COLOURS = {"cat": (220, 40, 40), "dog": (40, 200, 60), "car": (40, 60, 220)}
WORDS = ["a", "photo", "of", "the", "small", "big", "blurry", "picture", "an", "image", ".", *CLASSES]
SPECIALS = ["<pad>", "<unk>", "<start>", "<end>"]


def write_preprocessor(path: Path, size: int, mean: tuple[float, ...] = (0.5,) * 3) -> None:
    conf = {"do_resize": True, "size": {"shortest_edge": size}, "do_center_crop": True,
            "crop_size": {"height": size, "width": size}, "image_mean": list(mean), "image_std": [0.25] * 3}
    (path / "preprocessor_config.json").write_text(json.dumps(conf))


def make_clip_tokenizer(path: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(SPECIALS + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="<start> $A <end>", special_tokens=[("<start>", 2), ("<end>", 3)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>",
                                   bos_token="<start>", eos_token="<end>")
    fast.model_input_names = ["input_ids", "attention_mask"]
    fast.save_pretrained(str(path))


def make_tiny_clip(path: Path) -> str:
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(0)
    text = dict(vocab_size=len(SPECIALS) + len(WORDS), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=4, max_position_embeddings=32, pad_token_id=0, bos_token_id=2, eos_token_id=3,
                projection_dim=16)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=32,
                  patch_size=8, projection_dim=16)
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16))
    model.save_pretrained(str(path))
    make_clip_tokenizer(path)
    write_preprocessor(path, 32)
    return str(path)


def make_tiny_vit(path: Path) -> str:
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    conf = ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, num_labels=5)
    ViTForImageClassification(conf).save_pretrained(str(path))
    write_preprocessor(path, 32)
    return str(path)


def write_image_folder(root: Path, per_class: int, seed: int = 0, size: int = 40) -> Path:
    """``root/<class>/<i>.png``: a noisy square of the class colour on a grey background."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c in CLASSES:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            img = np.full((size, size, 3), 128, dtype=np.int16)
            x, y = rng.integers(0, size // 3, 2)
            img[y : y + size // 2, x : x + size // 2] = COLOURS[c]
            img += rng.integers(-30, 30, img.shape)
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(root / c / f"{i}.png")
    return root
