"""Load a trained method from its run directory and classify new texts."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from transformers import DataCollatorWithPadding

from peftlab.backbones.loaders import load_for_head, load_hf_config, load_tokenizer, method_load_kwargs
from peftlab.backbones.text_head import attach, row_head
from peftlab.config import ExperimentConfig, load_config
from peftlab.infra.errors import PeftlabError
from peftlab.infra.fingerprint import base_fingerprint, check_base
from peftlab.methods import METHODS
from peftlab.methods.peft_common import PeftMethod
from peftlab.methods.qlora import is_quantised
from peftlab.estimate.params import arch_spec
from peftlab.backbones.precision import Precision, resolve, shapes_of
from peftlab.results import RESULTS_FILE, read_result
from peftlab.runners.batching import encode
from peftlab.runners.rows import ADAPTER_DIR
from peftlab.runners.train import predict_logits
from peftlab.tasks.base import Split

#: peft adapter types whose update folds exactly into the base weights, as each method declares
#: (``merges``): LoRA (W + s * B A), (IA)^3 (a per-channel rescaling of W). Prompts and prefixes
#: have nothing to fold.
MERGEABLE = frozenset(m.peft_type for m in METHODS.in_order() if isinstance(m, PeftMethod) and m.merges)

#: texts per forward pass
BATCH = 32

#: separates premise and hypothesis on one line for sentence-pair tasks
PAIR_SEP = " ||| "


@dataclass
class Predictor:
    cfg: ExperimentConfig
    labels: list[str]
    model: Any
    tokenizer: Any
    #: what the forward passes compute in: the run's ``train.mixed_precision`` resolved on this CPU
    precision: Precision = field(default_factory=lambda: Precision("fp32", "default"))

    def probabilities(self, texts: list[str]) -> np.ndarray:
        pairs = None
        if self.cfg.task.text_pair_column:
            split = [t.split(PAIR_SEP, 1) for t in texts]
            if any(len(s) != 2 for s in split):
                raise PeftlabError(f"this task takes text pairs: write them as 'premise{PAIR_SEP}hypothesis'")
            texts, pairs = [s[0] for s in split], [s[1] for s in split]
        feats = encode(self.tokenizer, Split(texts=texts, labels=np.zeros(len(texts), dtype=np.int64), pairs=pairs),
                       self.cfg.train.max_length)
        logits = predict_logits(self.model, feats, DataCollatorWithPadding(self.tokenizer), BATCH, torch.device("cpu"),
                                self.precision.autocast)
        return torch.softmax(torch.from_numpy(logits), -1).numpy()


def load_adapter(method: Any, model: Any, params: Any, adapter_dir: Path) -> Any:
    """``method.load``, with a damaged or mismatched adapter turned into one line naming it."""
    try:
        return method.load(model, params, arch_spec(model.config), adapter_dir)
    except PeftlabError:
        raise
    except (SafetensorError, OSError, ValueError, RuntimeError, KeyError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise PeftlabError(f"{adapter_dir}: cannot load the adapter ({first[:200]})") from None


def merge_for_inference(model: Any) -> Any:
    """Fold a mergeable adapter (LoRA, (IA)^3: :data:`MERGEABLE`) into the base weights and drop peft's wrappers.

    Unmerged, every targeted linear runs its base matmul plus the low-rank path on each call;
    merged, inference costs exactly what the base model costs (bench/inference_latency.py
    measures both). A quantised base (QLoRA) stays unmerged: folding B A into 4-bit weights would
    re-quantise them and change the predictions.
    """
    from peft import PeftModel

    if not isinstance(model, PeftModel) or is_quantised(model):
        return model
    kinds = {str(getattr(c.peft_type, "value", c.peft_type)) for c in model.peft_config.values()}
    return model.merge_and_unload() if kinds <= MERGEABLE else model


def load_predictor(method_dir: str | Path, force_base: bool = False, merge: bool = True) -> Predictor:
    """The trained method of ``method_dir``, ready to classify; ``merge=False`` keeps a LoRA
    adapter unmerged (for comparing the two; the predictions are the same)."""
    mdir = Path(method_dir)
    run_dir = mdir.parent
    if not (mdir / RESULTS_FILE).is_file() or not (run_dir / "config.yaml").is_file():
        raise PeftlabError(f"{mdir} is not a method folder of a peftlab run (expected RUN_DIR/METHOD)")
    result = read_result(mdir / RESULTS_FILE)
    if result.status != "ok":
        raise PeftlabError(f"{mdir}: that method's run did not finish (status {result.status})")
    cfg = load_config(run_dir / "config.yaml")
    params = cfg.method(mdir.name)
    method = METHODS.get(params.method)
    if method.runner != "train":
        raise PeftlabError(f"{mdir}: predict serves fine-tuned classifiers; {params.method!r} rows prompt an LM "
                           "(re-run the config with the texts as the eval data)")
    bb = cfg.backbone_for(params)
    tokenizer = load_tokenizer(bb)
    extra = method_load_kwargs(bb, method, params, len(result.labels))
    head = row_head(cfg, params, load_hf_config(bb, num_labels=len(result.labels)), result.labels)
    model = load_for_head(bb, head, result.labels, tokenizer, extra)
    check_base(mdir / ADAPTER_DIR, base_fingerprint(model, bb.name), force_base)
    model = load_adapter(method, model, params, mdir / ADAPTER_DIR)
    model = merge_for_inference(model) if merge else model
    # head: text: the (merged) LM scores each label's verbalizer, as in training (peftlab.backbones.text_head)
    model = attach(model, head, tokenizer, result.labels, cfg.verbalizers_for(params))
    model.eval()
    return Predictor(cfg=cfg, labels=result.labels, model=model, tokenizer=tokenizer,
                     precision=predict_precision(cfg, method, params, model))


def predict_precision(cfg: ExperimentConfig, method: Any, params: Any, model: Any) -> Precision:
    """The run's ``train.mixed_precision`` resolved for prediction on this CPU, as training and
    evaluation resolve it (peftlab.backbones.precision): ``auto`` probes at the model's shapes and one batch."""
    return resolve(cfg.train.mixed_precision, "cpu", lambda: shapes_of(model.config, BATCH * cfg.train.max_length),
                   method.keeps_fp32(params, "cpu"))
