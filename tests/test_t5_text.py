"""``head: text`` on T5 (issue 21): the label's verbalizer is the decoder's target.

On a tiny random T5 folder (tests/test_t5.py builds it): every supported method trains (the loss
falls), changes exactly its own parameters, round-trips through save/load with identical scores,
and counts what its closed form says; the scorer equals a one-example-at-a-time definition; the
config refuses what the head does not run, in one line; a config runs end to end through the CLI.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from transformers import DataCollatorWithPadding, T5Config, T5ForConditionalGeneration, set_seed

from conftest import run_cli, write_tiny_csvs
from method_table import LABELS, _Cfg, _one_thread, split  # noqa: F401  (_one_thread: autouse)
from test_t5 import T5_SMALL, T5_TABLE, save_tiny_t5
from peftlab.backbones.loaders import load_for_head, load_tokenizer
from peftlab.backbones.text_head import TEXT, TEXT_HEAD_METHODS, attach, encode_verbalizers, lm_of, mark, verbalizers_for
from peftlab.config import BackboneConfig, TrainConfig, validate_raw
from peftlab.estimate.params import arch_spec, count_params
from peftlab.infra.errors import PeftlabError
from peftlab.methods import METHODS
from peftlab.runners.batching import encode
from peftlab.runners.experiment import _train
from peftlab.runners.train import make_accelerator, predict_logits

#: the tiny tokenizer's words: labels need verbalizers it knows ("positive" would be [UNK] for all three);
#: negative has two, one of them multi-token, so the log-sum-exp and the sums over tokens are exercised
VERBALIZERS = {"positive": "good", "negative": ["bad", "very bad"], "neutral": "so so"}

#: every row of the classifier's table whose method runs with head: text (all but linear_probe and qlora)
TEXT_TABLE: dict[str, tuple[str, dict[str, Any]]] = {row: r for row, r in T5_TABLE.items() if r[0] in TEXT_HEAD_METHODS}
#: rows whose prompts come from a trained encoder: a reload uses the saved prompts (last float bits)
ENCODER_ROWS = {"p_tuning"}


@pytest.fixture(scope="module")
def t5_folder(tmp_path_factory: pytest.TempPathFactory) -> str:
    return save_tiny_t5(tmp_path_factory.mktemp("tiny-t5-text"), gated=True)


def fresh_lm(path: str):
    set_seed(0)
    cfg = BackboneConfig(name=path)
    tok = load_tokenizer(cfg)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_for_head(cfg, TEXT, LABELS, tok), tok


def _row(row: str) -> tuple[Any, Any]:
    name, kw = TEXT_TABLE[row]
    method = METHODS.get(name)
    return method, method.Params(**kw)


def _scores(model: torch.nn.Module, tok: Any) -> np.ndarray:
    return predict_logits(model, encode(tok, split(24, 2), 32), DataCollatorWithPadding(tok), 16, torch.device("cpu"))


@pytest.mark.parametrize("row", list(TEXT_TABLE))
def test_text_head_trains_only_its_parameters_counts_its_closed_form_and_round_trips(t5_folder, tmp_path: Path, row):
    method, params = _row(row)
    model, tok = fresh_lm(t5_folder)
    spec = arch_spec(model.config)
    method.check(params, spec, model.config.model_type)
    model = method.prepare(model, params, spec)
    assert count_params(model) == (method.derived_trainable(params, spec), method.derived_total(params, spec))
    wrapped = attach(model, TEXT, tok, LABELS, VERBALIZERS)
    before = {n: p.detach().clone() for n, p in wrapped.named_parameters()}
    intended = {n for n, p in wrapped.named_parameters() if p.requires_grad}
    tcfg = TrainConfig(epochs=3, batch_size=8, eval_batch_size=16, warmup_ratio=0.0, weight_decay=0.0, device="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trained, out = _train(method, wrapped, params, spec, _Cfg(tcfg), encode(tok, split(48, 1), 32),
                              encode(tok, split(24, 2), 32), DataCollatorWithPadding(tok), make_accelerator(tcfg), True)
    losses = [e.train_loss for e in out.epochs]
    assert losses[-1] < losses[0], losses
    after = dict(trained.named_parameters())
    changed = {n for n in before if not torch.equal(before[n], after[n].detach())}
    assert changed == intended, (sorted(changed ^ intended)[:3])
    assert out.logits.shape == (24, len(LABELS)) and np.all(out.logits < 0)  # log-likelihoods

    method.save(lm_of(trained), params, tmp_path / "adapter")
    base, _ = fresh_lm(t5_folder)
    reloaded = attach(method.load(base, params, arch_spec(base.config), tmp_path / "adapter"), TEXT, tok, LABELS,
                      VERBALIZERS)
    got, want = _scores(reloaded, tok), _scores(trained, tok)
    if row in ENCODER_ROWS:
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    else:
        assert np.array_equal(got, want)
    untouched, _ = fresh_lm(t5_folder)
    assert not np.allclose(_scores(attach(untouched, TEXT, tok, LABELS, VERBALIZERS), tok), want)


def test_scores_are_each_verbalizers_exact_log_likelihood(t5_folder):
    """Batched, padded and repeated per verbalizer, the scores equal one unpadded example and one
    verbalizer at a time (log p of each target token, EOS included, summed); a label with two
    verbalizers scores their log-sum-exp."""
    model, tok = fresh_lm(t5_folder)
    head = attach(model, TEXT, tok, LABELS, VERBALIZERS).eval()
    texts = ["good drug", "bad day really so", "meh"]
    batch = tok(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        got = head(**batch).logits.numpy()
        targets, owners = encode_verbalizers(tok, verbalizers_for(LABELS, VERBALIZERS))
        want = np.zeros((len(texts), len(LABELS)))
        for i, t in enumerate(texts):
            ids = tok([t], return_tensors="pt").input_ids
            per = []
            for row in targets:
                target = row[row != -100][None]
                logp = torch.log_softmax(model(input_ids=ids, labels=target).logits[0].double(), -1)
                per.append(float(logp[torch.arange(target.shape[1]), target[0]].sum()))
            for k in range(len(LABELS)):
                want[i, k] = np.logaddexp.reduce([s for s, o in zip(per, owners) if o == k])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert owners == [0, 1, 1, 2] and tok.decode(targets[2][targets[2] != -100]).endswith("[EOS]")


def test_default_verbalizers_are_the_label_names_and_must_differ(t5_folder):
    _, tok = fresh_lm(t5_folder)
    assert verbalizers_for(["good", "bad"], None) == [["good"], ["bad"]]
    encode_verbalizers(tok, [["good"], ["bad"]])
    with pytest.raises(PeftlabError, match="tokenise the same"):  # both unknown words: [UNK] [EOS]
        encode_verbalizers(tok, [["positive"], ["negative"]])
    with pytest.raises(PeftlabError, match="not labels of this task"):
        verbalizers_for(LABELS, {"postive": "good"})


def test_lora_r8_on_t5_small_counts_the_reports_294912_through_the_text_head():
    """The course report's count is the text head's own: LoRA's factors and nothing else (no
    classification head; the LM head is tied to the frozen shared embedding)."""
    conf = mark(T5Config(**T5_SMALL), TEXT)
    torch.manual_seed(0)
    model = T5ForConditionalGeneration(conf)
    spec = arch_spec(model.config)
    method = METHODS.get("lora")
    params = method.Params(r=8)
    trainable, total = count_params(method.prepare(model, params, spec))
    assert trainable == method.derived_trainable(params, spec) == 294_912
    assert total == method.derived_total(params, spec) == 60_506_624 + 294_912
    pt, pf = METHODS.get("prompt_tuning"), METHODS.get("pfeiffer")
    assert pt.derived_trainable(pt.Params(num_virtual_tokens=10), spec) == 5_120
    assert pf.derived_trainable(pf.Params(bottleneck_size=8), spec) == 104_544


def test_a_flan_style_config_still_ties_the_lm_head_to_the_embedding():
    """flan-T5's config says tie_word_embeddings: false; transformers 5 ties T5's LM head anyway
    (that flag now only turns off the output scaling), so the closed forms count it once."""
    conf = mark(T5Config(vocab_size=25, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=3, num_heads=4,
                         feed_forward_proj="gated-gelu", tie_word_embeddings=False, decoder_start_token_id=0), TEXT)
    for name in ("full", "lora"):
        torch.manual_seed(0)
        model = T5ForConditionalGeneration(conf)
        spec = arch_spec(model.config)
        m = METHODS.get(name)
        p = m.Params()
        assert model.lm_head.weight is model.shared.weight
        assert count_params(m.prepare(model, p, spec)) == (m.derived_trainable(p, spec), m.derived_total(p, spec))


def _config(tmp_path: Path, backbone: Any, methods: list[dict[str, Any]], **train: Any) -> dict[str, Any]:
    train_f, eval_f = write_tiny_csvs(tmp_path)
    return {"name": "t5text", "backbone": backbone, "baseline": False,
            "task": {"source": "csv", "train_file": str(train_f), "eval_file": str(eval_f)}, "methods": methods,
            "train": {"epochs": 2, "batch_size": 8, "max_length": 32, "device": "cpu", "num_threads": 1, **train},
            "output_dir": str(tmp_path / "runs")}


def _run(tmp_path: Path, raw: dict[str, Any]):
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    return run_cli("run", str(tmp_path / "c.yaml"), "-q")


@pytest.mark.parametrize(("backbone", "methods", "train", "needle"), [
    ({"head": "txt"}, [{"method": "lora"}], {}, "backbone.head: Input should be 'auto', 'text' or 'classifier'"),
    ({}, [{"method": "lora", "head": "pooled"}], {}, "methods[0].head: Input should be 'text' or 'classifier'"),
    ({}, [{"method": "linear_probe"}], {}, "linear_probe with head: text: a linear probe trains the classification head"),
    ({}, [{"method": "qlora"}], {}, "qlora is not supported with head: text"),
    ({}, [{"method": "lora"}], {"class_weight": "balanced"}, "train.class_weight: balanced does not reach"),
    ({"head": "classifier"}, [{"method": "lora", "verbalizers": {"positive": "good"}}], {},
     "only head: text scores verbalizers"),
    ({"head": "text"}, [{"method": "icl", "head": "text"}], {}, "methods[0].head: icl rows have no head to choose"),
])
def test_head_config_errors_are_one_line(t5_folder, tmp_path: Path, backbone, methods, train, needle):
    raw = _config(tmp_path, {"name": t5_folder, **backbone}, methods, **train)
    proc = _run(tmp_path, raw)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert needle in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_head_text_on_an_encoder_is_refused(tiny_bert, tmp_path: Path):
    proc = _run(tmp_path, _config(tmp_path, {"name": tiny_bert, "head": "text"}, [{"method": "lora"}]))
    assert proc.returncode == 2 and "head: text needs an encoder-decoder backbone" in proc.stderr, proc.stderr
    assert validate_raw(_config(tmp_path, tiny_bert, [{"method": "lora"}])).backbone.head == "auto"


def test_a_t5_config_runs_every_row_on_the_text_head_end_to_end(t5_folder, tmp_path: Path):
    """The default head of an encoder-decoder: every listed method ok with counted == closed form,
    accuracy, per-class report, confusion matrix and predictions.jsonl (softmax over the labels'
    log-likelihoods); a row asking for the classifier next to them; then predict and report."""
    methods = [{"method": "full", "lr": 3e-3}, {"method": "lora", "lr": 1e-2, "r": 4},
               {"method": "prompt_tuning", "lr": 3e-2, "num_virtual_tokens": 4},
               {"method": "prefix_tuning", "lr": 3e-2, "num_virtual_tokens": 4}, {"method": "ia3", "lr": 3e-2},
               {"method": "houlsby", "lr": 1e-2, "bottleneck_size": 4}, {"method": "pfeiffer", "lr": 1e-2, "bottleneck_size": 4},
               {"method": "lora", "name": "lora_classifier", "head": "classifier", "lr": 1e-2, "r": 4}]
    proc = _run(tmp_path, _config(tmp_path, {"name": t5_folder, "verbalizers": VERBALIZERS}, methods))
    assert proc.returncode == 0, proc.stderr[-3000:]
    for m in methods:
        row = tmp_path / "runs" / m.get("name", m["method"])
        res = json.loads((row / "results.json").read_text())
        assert res["status"] == "ok", res.get("error")
        assert res["params"]["agree"] is True, (m, res["params"])
        assert res["details"]["head"] == m.get("head", "text")
        assert set(res["per_class"]) >= set(LABELS) and len(res["confusion_matrix"]) == 3
        preds = [json.loads(x) for x in (row / "predictions.jsonl").read_text().splitlines()]
        assert len(preds) == 24 and all(abs(sum(p["probs"].values()) - 1) < 1e-5 for p in preds), preds[0]
    lora = json.loads((tmp_path / "runs" / "lora" / "results.json").read_text())
    assert lora["details"]["verbalizers"] == {"positive": ["good"], "negative": ["bad", "very bad"], "neutral": ["so so"]}
    assert "head" not in lora["method_params"]  # unset row fields stay out of the recorded params
    adapter = json.loads((tmp_path / "runs" / "lora" / "adapter" / "adapter_config.json").read_text())
    assert adapter["task_type"] == "SEQ_2_SEQ_LM" and not adapter.get("modules_to_save")
    for row in ("lora", "prompt_tuning", "houlsby"):
        pred = run_cli("predict", str(tmp_path / "runs" / row), "good drug really", "--json")
        assert pred.returncode == 0, pred.stderr[-2000:]
        assert json.loads(pred.stdout)
    assert run_cli("report", str(tmp_path / "runs")).returncode == 0
