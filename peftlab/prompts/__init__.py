"""Prompt templates as data (YAML): instruction, example format, label verbalizers."""

from peftlab.prompts.template import Demo, PromptTemplate, load_template, render_context

__all__ = ["Demo", "PromptTemplate", "load_template", "render_context"]
