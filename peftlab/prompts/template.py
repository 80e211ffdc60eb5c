"""A prompt template and its rendering, plain or through the model's chat template.

A template is data: an ``instruction``, an ``example`` format with ``{text}`` (and ``{pair}`` for
sentence pairs), and ``verbalizers``: one or more strings per label, the continuations whose
log-likelihood scores that label. Shipped templates live next to this module
(``sentiment``, ``nli``); any other name is read as a YAML file path.

Plain rendering::

    instruction + sep + example(demo1) + answer1 + sep + ... + example(query)

Chat rendering (instruct models): the instruction and each demonstration are user turns, the
demonstrations' answers assistant turns, and the query the last user turn followed by the
generation prompt; the answer continuation is then the verbalizer without its leading space.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError, field_validator

from peftlab.infra.config_base import StrictModel
from peftlab.infra.errors import PeftlabError

TEMPLATES_DIR = Path(__file__).parent / "templates"


class PromptTemplate(StrictModel):
    name: str = "custom"
    instruction: str = ""
    example: str = Field(min_length=1)
    #: label name -> continuations; the first one is what demonstrations show as the answer
    verbalizers: dict[str, list[str]] = Field(min_length=2)
    separator: str = "\n\n"
    #: appended to the query in reasoning mode (chain of thought)
    cot_trigger: str = " Let's think step by step."
    #: the phrase after which reasoning mode expects the final answer
    answer_prefix: str = "The answer is"

    @field_validator("verbalizers", mode="before")
    @classmethod
    def _one_or_many(cls, v: Any) -> Any:
        if isinstance(v, dict):
            return {k: [x] if isinstance(x, str) else x for k, x in v.items()}
        return v

    @field_validator("verbalizers")
    @classmethod
    def _non_empty(cls, v: dict[str, list[str]]) -> dict[str, list[str]]:
        for label, words in v.items():
            if not words or any(not w.strip() for w in words):
                raise ValueError(f"verbalizers.{label}: needs one or more non-blank strings")
        return v

    def format_example(self, text: str, pair: str | None) -> str:
        return self.example.replace("{text}", text).replace("{pair}", pair or "")

    def for_labels(self, labels: list[str]) -> list[list[str]]:
        """Verbalizers in the task's label order; every task label must have one."""
        missing = [lab for lab in labels if lab not in self.verbalizers]
        if missing:
            raise PeftlabError(f"template {self.name!r}: no verbalizer for label(s) {missing} "
                               f"(has {sorted(self.verbalizers)}); set verbalizers in the method")
        return [self.verbalizers[lab] for lab in labels]


@dataclass(frozen=True)
class Demo:
    """One demonstration: its text (and pair) and the answer string shown after it."""

    text: str
    pair: str | None
    answer: str


def load_template(name_or_path: str, overrides: dict[str, Any] | None = None) -> PromptTemplate:
    """A shipped template by name, or a YAML file; ``overrides`` replace its fields."""
    path = TEMPLATES_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        path = Path(name_or_path)
    if not path.is_file():
        shipped = sorted(p.stem for p in TEMPLATES_DIR.glob("*.yaml"))
        raise PeftlabError(f"template {name_or_path!r}: not a shipped template ({', '.join(shipped)}) nor a file")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError):
        raise PeftlabError(f"template {path}: malformed YAML") from None
    if not isinstance(raw, dict):
        raise PeftlabError(f"template {path}: top level must be a mapping")
    raw = {"name": path.stem, **raw, **{k: v for k, v in (overrides or {}).items() if v is not None}}
    try:
        return PromptTemplate.model_validate(raw)
    except ValidationError as err:
        e = err.errors()[0]
        where = ".".join(str(p) for p in e["loc"])
        raise PeftlabError(f"template {path.name}: {where}: {e['msg'].removeprefix('Value error, ')}") from None


def render_context(tpl: PromptTemplate, demos: list[Demo], text: str, pair: str | None,
                   tokenizer: Any = None, suffix: str = "") -> str:
    """The prompt up to the answer. With ``tokenizer`` (a chat template) render as a chat."""
    query = tpl.format_example(text, pair) + suffix
    if tokenizer is None:
        parts = [tpl.instruction] if tpl.instruction else []
        parts += [tpl.format_example(d.text, d.pair) + d.answer for d in demos]
        return tpl.separator.join(parts + [query])
    messages: list[dict[str, str]] = []
    lead = tpl.instruction + tpl.separator if tpl.instruction else ""
    for d in demos:
        messages.append({"role": "user", "content": lead + tpl.format_example(d.text, d.pair)})
        messages.append({"role": "assistant", "content": d.answer.strip()})
        lead = ""
    messages.append({"role": "user", "content": lead + query})
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def answer_strings(verbalizers: list[list[str]], chat: bool) -> list[list[str]]:
    """Continuations as scored: a chat answer starts its own turn, so no leading space."""
    return [[w.strip() if chat else w for w in words] for words in verbalizers]
