"""Image paths on tiny random CLIP / ViT / EfficientNet-Lite models built in the test (no network)."""

from __future__ import annotations

import gzip
import io
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from tiny_images import CLASSES, make_tiny_clip, make_tiny_vit, write_image_folder

from peftlab.config import BackboneConfig, TaskConfig, TrainConfig
from peftlab.infra.errors import PeftlabError
from peftlab.images import efficientnet as E
from peftlab.images import params as P
from peftlab.images.backbones import load_image_backbone
from peftlab.images.method_base import ImageContext
from peftlab.images.methods_clip import Coop, PromptLearner, encode_texts, text_classifier
from peftlab.images.zeroshot import ensemble, normalise, template_search, zero_shot_logits
from peftlab.methods.clip_methods import CoopParams
from peftlab.runners.cached import fit_tensors
from peftlab.tasks.images import load_image_task
from peftlab.tasks.sampling import k_shot_indices


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> str:
    return make_tiny_clip(tmp_path_factory.mktemp("tiny-clip"))


@pytest.fixture(scope="module")
def clip(tiny_clip: str):
    return load_image_backbone(BackboneConfig(name=tiny_clip))


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_image_folder(tmp_path_factory.mktemp("imgs"), per_class=8)


def _context(clip, folder: Path, cache: Path | None, epochs: int = 2) -> ImageContext:
    data = load_image_task(TaskConfig(source="image_folder", data_dir=str(folder), eval_fraction=0.25), seed=0)
    prep = clip.preprocess
    return ImageContext(backbone=clip, data=data, x_train=prep.batch(data.train.images), x_eval=prep.batch(data.eval.images),
                        tcfg=TrainConfig(epochs=epochs, batch_size=4), device=torch.device("cpu"), cache_dir=cache)


def test_zero_shot_classifier_equals_manual_computation(clip, tiny_clip, folder):
    from transformers import AutoTokenizer, CLIPModel

    model, tok = CLIPModel.from_pretrained(tiny_clip).eval(), AutoTokenizer.from_pretrained(tiny_clip)
    template = "a photo of a {} ."
    w = text_classifier(clip, CLASSES, [template])
    enc = tok([template.format(c) for c in CLASSES], padding=True, return_tensors="pt")
    ctx = _context(clip, folder, None)
    with torch.no_grad():
        manual = model.get_text_features(**enc).pooler_output
        manual = manual / manual.norm(dim=-1, keepdim=True)
        # CLIP's own forward: logits_per_image = scale * cos(image, text)
        reference = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                          pixel_values=ctx.x_eval).logits_per_image
        ours = zero_shot_logits(clip.encode_image(ctx.x_eval), w, clip.logit_scale)
    assert torch.allclose(w, manual, atol=1e-6)
    assert torch.allclose(ours, reference, atol=1e-4)


def test_template_ensemble_math(clip):
    raw = torch.tensor([[[3.0, 0.0], [0.0, 0.5]], [[1.0, 1.0], [2.0, 2.0]]])  # 2 classes x 2 templates
    out = ensemble(raw)
    assert torch.allclose(out[0], torch.tensor([1.0, 1.0]) / 2**0.5)  # mean of unit vectors, renormalised
    assert torch.allclose(out[1], torch.tensor([1.0, 1.0]) / 2**0.5)
    templates = ["a photo of a {} .", "the big {} ."]
    by_hand = []
    for c in CLASSES:
        e = normalise(encode_texts(clip, [t.format(c) for t in templates]))
        by_hand.append(normalise(e.mean(0)))
    assert torch.allclose(text_classifier(clip, CLASSES, templates), torch.stack(by_hand), atol=1e-6)
    # a per-class override replaces that class's prompts only
    over = text_classifier(clip, CLASSES, templates, {"dog": ["a blurry picture of the dog ."]})
    assert torch.allclose(over[1], normalise(encode_texts(clip, ["a blurry picture of the dog ."])[0]), atol=1e-6)
    assert torch.allclose(over[0], by_hand[0], atol=1e-6)


def test_template_search_only_keeps_an_improvement():
    torch.manual_seed(0)
    labels = np.arange(30) % 3
    centres = torch.eye(4)[:3] * 3
    img = centres[labels] + 0.3 * torch.randn(30, 4)
    classifier = normalise(torch.stack([-centres[0], centres[1], centres[2]]))  # class "a" points away
    good = normalise(centres[0])  # a candidate that points at class "a" must help it
    res = template_search(img, labels, ["a", "b", "c"], classifier, 10.0, "a", ["bad {}", "good {}"],
                          lambda texts: (good if texts[0].startswith("good") else -good)[None])
    assert res["template"] == "good {}"
    res_none = template_search(img, labels, ["a", "b", "c"], classifier, 10.0, "a", ["bad {}"], lambda t: -good[None])
    assert res_none["template"] is None and torch.equal(res_none["embedding"], classifier[0])


def test_coop_context_from_words_reproduces_the_plain_prompt(clip):
    learner = PromptLearner(clip, CLASSES, CoopParams(ctx_init="a photo of a"), seed=0)
    assert learner.n_ctx == 4 and learner.ctx.shape == (4, 32)
    with torch.no_grad():
        plain = encode_texts(clip, [f"a photo of a {c}." for c in CLASSES])
        assert torch.allclose(learner.text_features(), plain, atol=1e-5)


def test_coop_n_ctx_is_never_silently_replaced_by_ctx_init(clip):
    with pytest.raises(ValidationError, match="ctx_init: null"):
        CoopParams(n_ctx=16)  # the default init phrase would have made it 4
    assert CoopParams(n_ctx=16, ctx_init=None).n_ctx == 16
    with pytest.raises(PeftlabError, match="4 tokens, but n_ctx is 16"):
        PromptLearner(clip, CLASSES, CoopParams(n_ctx=16, ctx_init="a photo of a"), seed=0)
    assert PromptLearner(clip, CLASSES, CoopParams(n_ctx=4, ctx_init="a photo of a"), seed=0).n_ctx == 4


def test_only_context_vectors_change_under_coop(clip, folder):
    ctx = _context(clip, folder, None, epochs=1)
    for class_specific in (False, True):
        built = Coop().build(ctx, CoopParams(class_specific=class_specific, ctx_init=None, n_ctx=3))
        before = {n: p.detach().clone() for n, p in built.model.named_parameters()}
        trainable = [n for n, p in built.model.named_parameters() if p.requires_grad]
        assert trainable == ["learned.ctx"]
        fit_tensors(built.trainable, built.forward, built.x_train, ctx.data.train.labels, built.x_eval,
                    ctx.data.eval.labels, 0.05, ctx.tcfg, ctx.device)
        changed = [n for n, p in built.model.named_parameters() if not torch.equal(before[n], p)]
        assert changed == ["learned.ctx"]
        d_train, _ = Coop().derived(ctx, CoopParams(class_specific=class_specific, ctx_init=None, n_ctx=3))
        assert d_train == built.trainable.ctx.numel() == 3 * 32 * (3 if class_specific else 1)


def test_cached_features_equal_recomputed(clip, folder, tmp_path):
    first = _context(clip, folder, tmp_path)
    f_train, f_eval = first.features("clip_image", clip.encode_image, clip.model)
    assert len(list(tmp_path.glob("clip_image-*.safetensors"))) == 1
    calls = []
    again = _context(clip, folder, tmp_path)  # new in-memory cache: this one must read the disk
    g_train, g_eval = again.features("clip_image", lambda x: calls.append(1) or clip.encode_image(x), clip.model)
    assert not calls
    with torch.no_grad():
        assert torch.allclose(g_train, clip.encode_image(first.x_train), atol=1e-6)
        assert torch.allclose(g_eval, clip.encode_image(first.x_eval), atol=1e-6)
    assert torch.equal(f_train, g_train) and torch.equal(f_eval, g_eval)
    other = torch.nn.Linear(2, 2)  # other weights: a new entry, never the old one
    again.features("other_net", clip.encode_image, other)
    third = _context(clip, folder, tmp_path)
    third.features("clip_image", lambda x: calls.append(1) or clip.encode_image(x), other)
    assert calls == [1, 1] and len(list(tmp_path.glob("clip_image-*.safetensors"))) == 2  # train, eval


TINY_LITE = E.LiteConfig(stem=8, head=24, stages=(E.Stage(1, 3, 1, 8, 1), E.Stage(6, 5, 2, 16, 2)))


def _lukemelas_name(ours: str) -> str:
    """Our names back to lukemelas/EfficientNet-PyTorch's, written out independently of the mapper."""
    top = {"stem.conv": "_conv_stem", "stem.bn": "_bn0", "head_conv.conv": "_conv_head", "head_conv.bn": "_bn1",
           "classifier": "_fc"}
    block = {"expand.conv": "_expand_conv", "expand.bn": "_bn0", "depthwise.conv": "_depthwise_conv",
             "depthwise.bn": "_bn1", "project.conv": "_project_conv", "project.bn": "_bn2"}
    mod, _, leaf = ours.rpartition(".")
    if mod.startswith("blocks."):
        _, i, rest = mod.split(".", 2)
        return f"_blocks.{i}.{block[rest]}.{leaf}"
    return f"{top[mod]}.{leaf}"


def test_tiny_lite_loads_lukemelas_keys(tmp_path):
    assert E.map_lukemelas_key("_blocks.3._bn1.weight") == "blocks.3.depthwise.bn.weight"
    assert E.map_lukemelas_key("_bn1.running_var") == "head_conv.bn.running_var"
    with pytest.raises(PeftlabError):
        E.map_lukemelas_key("_blocks.0._se_reduce.weight")
    torch.manual_seed(1)
    ref = E.EfficientNetLite(7, TINY_LITE)
    for m in ref.modules():  # non-trivial statistics, so a wrong mapping cannot pass
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    src = tmp_path / "lite.pth"
    torch.save({_lukemelas_name(k): v for k, v in ref.state_dict().items()}, str(src))
    state = E.cached_weights(source=src, cache=tmp_path / "cache")
    assert (tmp_path / "cache" / "efficientnet-lite0.safetensors").is_file()
    model = E.load_lite(7, state, TINY_LITE).eval()
    ref.eval()
    body = {k: v for k, v in ref.state_dict().items() if not k.startswith("classifier") and "num_batches" not in k}
    for k, v in body.items():
        assert torch.equal(model.state_dict()[k], v), k
    x = torch.randn(2, 3, 33, 29)  # odd sizes: TF "SAME" padding must still line up
    assert model.stem(x).shape == (2, 8, 17, 15)
    assert sum(p.numel() for p in model.parameters()) == P.lite_total(TINY_LITE, 7)


def test_lite0_closed_forms_match_the_real_architecture():
    model = E.EfficientNetLite(1000)
    assert sum(p.numel() for p in model.parameters()) == P.lite_total(E.LiteConfig(), 1000) == 4652008
    convs = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)}
    assert set(convs) == set(P.lite_convs(E.LiteConfig()))


@pytest.mark.skipif(__import__("importlib").util.find_spec(E.PACKAGE) is None, reason="efficientnet-lite0 package not installed")
def test_packaged_lite0_weights_map_completely(tmp_path):
    state = E.cached_weights(cache=tmp_path)
    model = E.load_lite(10, state)
    assert len(state) == 296 - 49  # every tensor but num_batches_tracked, with a 1000-class head dropped on load
    assert torch.equal(model.stem.conv.weight, state["stem.conv.weight"])


def test_vit_closed_form(tmp_path):
    from transformers import AutoConfig

    path = make_tiny_vit(tmp_path / "vit")
    bb = load_image_backbone(BackboneConfig(name=path))
    model = bb.load(CLASSES, 0)
    assert sum(p.numel() for p in model.parameters()) == P.vit_total(AutoConfig.from_pretrained(path), 3)


def test_k_shot_sampling_is_seeded_and_per_class():
    labels = np.array([0] * 50 + [1] * 5 + [2] * 20)
    idx = k_shot_indices(labels, 8, seed=3)
    assert np.bincount(labels[idx]).tolist() == [8, 5, 8]
    assert np.array_equal(idx, k_shot_indices(labels, 8, seed=3))
    assert not np.array_equal(idx, k_shot_indices(labels, 8, seed=4))


def _idx(data: np.ndarray) -> bytes:
    head = bytes([0, 0, 8, data.ndim]) + b"".join(d.to_bytes(4, "big") for d in data.shape)
    return gzip.compress(head + data.astype(np.uint8).tobytes())


def test_fashion_mnist_idx_reader(tmp_path):
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 40), ("t10k", 20)):
        (tmp_path / f"{prefix}-images-idx3-ubyte.gz").write_bytes(_idx(rng.integers(0, 255, (n, 28, 28))))
        (tmp_path / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(_idx(np.arange(n) % 10))
    data = load_image_task(TaskConfig(source="fashion_mnist", data_dir=str(tmp_path), k_shot=2), seed=0)
    assert len(data.train) == 20 and len(data.eval) == 20 and data.label_names[9] == "Ankle boot"
    assert data.train.images[0].shape == (28, 28)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"\x00\x00\x0d\x01"))
    with pytest.raises(PeftlabError, match="not an unsigned-byte IDX"):
        load_image_task(TaskConfig(source="fashion_mnist", data_dir=str(tmp_path)), seed=0)


def test_cifar_batches_read_safely(tmp_path):
    rng = np.random.default_rng(0)
    for name, n in (("data_batch_1", 20), ("test_batch", 10)):
        batch = {b"data": rng.integers(0, 255, (n, 3072)).astype(np.uint8), b"labels": [i % 10 for i in range(n)]}
        (tmp_path / name).write_bytes(pickle.dumps(batch, protocol=2))
    (tmp_path / "batches.meta").write_bytes(pickle.dumps({b"label_names": [f"c{i}".encode() for i in range(10)]}))
    data = load_image_task(TaskConfig(source="cifar10", data_dir=str(tmp_path)), seed=0)
    assert len(data.train) == 20 and data.train.images[0].shape == (32, 32, 3) and data.label_names[3] == "c3"

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    buf = io.BytesIO()
    pickle.dump({b"data": Evil()}, buf)
    (tmp_path / "data_batch_1").write_bytes(buf.getvalue())
    with pytest.raises(PeftlabError, match="refused"):
        load_image_task(TaskConfig(source="cifar10", data_dir=str(tmp_path)), seed=0)


def test_image_methods_refused_on_text_and_wrong_backbone(tiny_bert, tiny_clip, tmp_path):
    from peftlab.config import validate_raw
    from peftlab.runners.experiment import preflight
    from peftlab.runners.image_experiment import preflight_image

    text = validate_raw({"backbone": tiny_bert, "task": {"source": "csv", "train_file": "x.csv"},
                         "methods": ["coop"]})
    with pytest.raises(PeftlabError, match="needs an image task"):
        preflight(text)
    img = validate_raw({"backbone": tiny_clip, "task": {"source": "image_folder", "data_dir": str(tmp_path)},
                        "methods": ["lora"]})
    with pytest.raises(PeftlabError, match="does not run on a clip image backbone"):
        preflight_image(img)
    with pytest.raises(PeftlabError, match="data_dir is required"):
        validate_raw({"backbone": tiny_clip, "task": {"source": "image_folder"}, "methods": ["coop"]})


def test_each_method_declares_the_backbone_kinds_it_runs_on_and_each_image_kind_is_implemented():
    """One declaration per method (``Method.runs_on``, issue 20): every image kind a method declares
    has its implementation and none exists for an undeclared kind; the refusals come from it."""
    import peftlab.images.methods_classifier  # noqa: F401  (registers the classifier implementations)
    from peftlab.images.method_base import IMAGE_METHODS, implement
    from peftlab.methods import METHODS
    from peftlab.methods.base import refuse_kind

    declared = {f"{m.name}:{k}" for m in METHODS.in_order() for k in m.runs_on if k != "text"}
    assert set(IMAGE_METHODS.names()) == declared
    with pytest.raises(TypeError, match="does not declare 'clip'"):
        implement("lora", "clip", object())
    with pytest.raises(PeftlabError, match=r"'qlora' does not run on a classifier image backbone \(it is a text-only"):
        refuse_kind(METHODS.get("qlora"), "classifier")
    with pytest.raises(PeftlabError, match=r"'lora' does not run on a clip image backbone \(it runs on classifier"):
        refuse_kind(METHODS.get("lora"), "clip")
    with pytest.raises(PeftlabError, match="'coop' needs an image task with a CLIP backbone"):
        refuse_kind(METHODS.get("coop"), "text")


def test_hf_image_source_on_a_local_imagefolder(tmp_path):
    for split, n in (("train", 3), ("test", 2)):
        write_image_folder(tmp_path / split, per_class=n, seed=n)
    data = load_image_task(TaskConfig(source="hf_image", hf_id="imagefolder", data_dir=str(tmp_path),
                                      eval_split="test"), seed=0)
    assert sorted(data.label_names) == sorted(CLASSES) and len(data.train) == 9 and len(data.eval) == 6
    names = [data.label_names[i] for i in data.train.labels]
    assert names.count("dog") == 3
    with pytest.raises(PeftlabError, match="image_column"):
        load_image_task(TaskConfig(source="hf_image", hf_id="imagefolder", data_dir=str(tmp_path),
                                   eval_split="test", image_column="img"), seed=0)


def test_cnn_lora_trains_adapters_only_and_keeps_batch_norm_statistics():
    from peftlab.images.backbones import ClassifierBackbone
    from peftlab.images.methods_classifier import ClassifierLora
    from peftlab.images.preprocess import Preprocess
    from peftlab.methods.lora import LoraParams
    from peftlab.estimate.params import count_params
    from peftlab.tasks.images import ImageSplit, ImageTaskData

    torch.manual_seed(0)
    bb = ClassifierBackbone(name="tiny-lite", family="efficientnet-lite", preprocess=Preprocess(32, (0.5,) * 3, (0.5,) * 3),
                            load=lambda labels, seed: E.EfficientNetLite(len(labels), TINY_LITE), arch=TINY_LITE)
    labels = np.arange(12) % 3
    data = ImageTaskData("t", CLASSES, ImageSplit([None] * 12, labels), ImageSplit([None] * 6, labels[:6]))
    ctx = ImageContext(backbone=bb, data=data, x_train=torch.randn(12, 3, 32, 32), x_eval=torch.randn(6, 3, 32, 32),
                       tcfg=TrainConfig(epochs=2, batch_size=4), device=torch.device("cpu"))
    params = LoraParams(r=2, lr=1e-2, dropout=0.0)
    built = ClassifierLora().build(ctx, params)
    buffers = {n: b.clone() for n, b in built.model.named_buffers()}
    before = {n: p.detach().clone() for n, p in built.model.named_parameters()}
    fit_tensors(built.trainable, built.forward, ctx.x_train, labels, ctx.x_eval, labels[:6], params.lr, ctx.tcfg,
                ctx.device, train_mode=built.train_mode)
    assert all(torch.equal(b, buffers[n]) for n, b in built.model.named_buffers())
    changed = {n for n, p in built.model.named_parameters() if not torch.equal(before[n], p)}
    assert changed and all("lora_B" in n or "modules_to_save" in n or "lora_A" in n for n in changed)
    trainable, total = count_params(built.model)
    assert (trainable, total) == ClassifierLora().derived(ctx, params)
    # blocks 1-2 expand + project (block 0 has no expansion): r * (d_in + d_out) each, plus the head
    by_hand = 2 * ((8 + 8) + (8 + 48) + (48 + 16) + (16 + 96) + (96 + 16)) + (24 * 3 + 3)
    assert trainable == by_hand


@pytest.mark.parametrize("name", ["fashion_mnist", "clip_food101", "vit_food101"])
def test_shipped_image_configs_validate(name):
    from peftlab.config import load_config

    cfg = load_config(Path(__file__).parents[1] / "configs" / f"{name}.yaml")
    assert cfg.task.modality == "image"
    if name == "fashion_mnist":  # an offline alias: its kind and methods are checked without weights
        from peftlab.runners.image_experiment import preflight_image

        assert preflight_image(cfg) == "classifier"
        # the LoRA family's options are text-only so far: refused before any weights, not run as plain LoRA
        from peftlab.methods.lora import LoraParams

        dora = cfg.model_copy(update={"methods": [LoraParams(use_dora=True, target_modules="all-linear")]})
        with pytest.raises(PeftlabError, match=r"lora: use_dora, target_modules: all-linear not supported on image"):
            preflight_image(dora)
