"""Safety properties of the package as a whole: no pickle, no remote code, no crash on odd input.

The grep tests read the package source: a new ``torch.load`` or ``pickle.load`` anywhere fails
them, so untrusted files can only ever go through safetensors/JSON. The property tests throw
random configs, overrides, YAML and CSV at the parsers: the only exception allowed out is the
one-line PeftlabError.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import peftlab
from peftlab.config import apply_override, load_raw, parse_override, validate_raw
from peftlab.infra.errors import PeftlabError

PACKAGE = Path(peftlab.__file__).parent
SOURCES = {p.relative_to(PACKAGE).as_posix(): p.read_text(encoding="utf-8") for p in PACKAGE.rglob("*.py")}


def calls(pattern: str) -> dict[str, list[str]]:
    found = {}
    for name, text in SOURCES.items():
        lines = [ln.strip() for ln in text.splitlines() if re.search(pattern, ln) and not ln.strip().startswith("#")]
        if lines:
            found[name] = lines
    return found


def test_no_torch_load_but_the_one_weights_only_read():
    found = calls(r"torch\.load\(")
    # the only pickle on disk we read is EfficientNet-Lite0's packaged state dict, tensors only
    assert list(found) == ["images/efficientnet.py"], found
    assert all("weights_only=True" in ln for ln in found["images/efficientnet.py"])


def test_no_pickle_loads_anywhere():
    assert not calls(r"pickle\.loads?\(|cPickle|dill\.load|joblib\.load|np\.load\(.*allow_pickle=True")
    # CIFAR-10's python batches are pickles: read through an Unpickler that only admits plain data
    unpicklers = calls(r"pickle\.Unpickler")
    assert list(unpicklers) == ["tasks/images.py"]
    assert "def find_class" in SOURCES["tasks/images.py"]


def test_trust_remote_code_is_off_unless_asked():
    from peftlab.backbones.loaders import _kwargs
    from peftlab.config import BackboneConfig

    assert _kwargs(BackboneConfig(name="x"))["trust_remote_code"] is False
    assert _kwargs(BackboneConfig(name="x", trust_remote_code=True))["trust_remote_code"] is True
    assert not calls(r"trust_remote_code\s*=\s*True")


VALID = {
    "backbone": "minilm-l6",
    "task": {"source": "builtin", "name": "drugreview"},
    "methods": [{"method": "lora", "r": 8, "lr": 1e-3}],
    "train": {"epochs": 1},
}

scalars = st.none() | st.booleans() | st.integers(-10, 10**6) | st.floats(allow_nan=True) | st.text(max_size=12)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
                      max_leaves=8)
keys = st.sampled_from(["backbone", "task", "methods", "train", "output_dir", "name", "baseline", "x",
                        "task.source", "task.n_train", "train.epochs", "train.batch_size", "methods.0.r",
                        "methods.0.lr", "methods.0.method", "methods.0.target_modules", "train.seed"])

#: derandomized: CI sees the same examples every run (the suite stays green or red for a reason);
#: set derandomize=False locally to explore further
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)


def _only_clean_errors(fn) -> None:
    try:
        fn()
    except PeftlabError as exc:
        assert "\n" not in str(exc)


@FAST
@given(key=keys, value=values)
def test_config_parser_never_crashes(key, value):
    raw = yaml.safe_load(yaml.safe_dump(VALID))
    node, *_ = [raw]

    def mutate():
        parts = key.split(".")
        apply_override(raw, parts, value)
        validate_raw(raw)

    _only_clean_errors(mutate)
    del node


@FAST
@given(text=st.text(max_size=40))
def test_override_parser_never_crashes(text):
    raw = yaml.safe_load(yaml.safe_dump(VALID))

    def go():
        path, value = parse_override(text)
        apply_override(raw, path, value)
        validate_raw(raw)

    _only_clean_errors(go)


@FAST
@given(data=st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_yaml_loader_never_crashes(tmp_path_factory, data):
    p = tmp_path_factory.mktemp("yaml") / "c.yaml"
    p.write_bytes(data)
    _only_clean_errors(lambda: load_raw(p))


cells = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12)


@FAST
@given(rows=st.lists(st.tuples(cells, cells), max_size=12), header=st.sampled_from(["text,label", "label,text", "a,b"]),
       raw_bytes=st.binary(max_size=40))
def test_csv_loader_never_crashes(tmp_path_factory, rows, header, raw_bytes):
    import csv
    import io

    from peftlab.config import TaskConfig
    from peftlab.tasks import load_task

    root = tmp_path_factory.mktemp("csv")
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(header.split(","))
    w.writerows(rows)
    (root / "train.csv").write_bytes(buf.getvalue().encode("utf-8") + raw_bytes)
    cfg = TaskConfig(source="csv", train_file=str(root / "train.csv"))
    _only_clean_errors(lambda: load_task(cfg, 0))


@pytest.mark.parametrize("source", ["jsonl", "tsv", "parquet"])
@FAST
@given(data=st.binary(max_size=120))
def test_other_file_loaders_never_crash(tmp_path_factory, source, data):
    from peftlab.config import TaskConfig
    from peftlab.tasks import load_task

    p = tmp_path_factory.mktemp(source) / f"train.{source}"
    p.write_bytes(data)
    _only_clean_errors(lambda: load_task(TaskConfig(source=source, train_file=str(p)), 0))


def test_a_superscript_digit_label_is_a_name_not_an_index(tmp_path):
    """Found by the property test above: "¹".isdigit() is true, int("¹") raises."""
    from peftlab.config import TaskConfig
    from peftlab.tasks import load_task

    p = tmp_path / "train.csv"
    p.write_text("text,label\n" + "".join(f"t{i},{'¹' if i % 2 else 'x'}\n" for i in range(10)), encoding="utf-8")
    data = load_task(TaskConfig(source="csv", train_file=str(p)), 0)
    assert sorted(data.label_names) == ["x", "¹"]


def test_an_odd_key_is_quoted_and_the_error_stays_one_line():
    """Found by the property test: a key holding a newline split the error over two lines."""
    raw = yaml.safe_load(yaml.safe_dump(VALID))
    raw["task"]["a\nb"] = 1
    with pytest.raises(PeftlabError) as err:
        validate_raw(raw)
    assert "\n" not in str(err.value) and "'a\\nb'" in str(err.value)
