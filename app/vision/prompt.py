"""The describer's prompt: a template with `{question}` (the user's text of the turn the
image came with, capped) and `{ocr}` (the text OCR read in it, when the template asks).

    prompt = render_prompt(DEFAULT_PROMPT, question="What is broken here?", ocr="")
    question = question_of(message)        # the text parts of one chat message
"""

from __future__ import annotations

import string
from typing import Any

# The question as the describer reads it: a long paste is cut here.
QUESTION_MAX_CHARS = 1000
# OCR text handed to the describer, when its template asks for {ocr}.
OCR_MAX_CHARS = 2000
PROMPT_FIELDS = frozenset({"question", "ocr"})

DEFAULT_PROMPT = (
    "You describe an image for a reader who cannot see it and will answer the user's "
    "question from your words alone.\n"
    "The user's question: {question}\n"
    "Describe faithfully what matters for that question: the objects, their state and "
    "positions, and any people, charts, diagrams or user interface. Transcribe any text and "
    "every number exactly as written. Say what you cannot make out rather than guess. "
    "Write in the language of the question; if there is no question, describe the whole "
    "image. Answer with the description only."
)


def prompt_fields(template: str) -> set[str]:
    """The placeholders of a prompt template; ValueError for one it cannot fill."""
    fields = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    unknown = fields - PROMPT_FIELDS
    if unknown or "" in fields:
        raise ValueError(
            f"describer prompt: unknown placeholder(s) {sorted(unknown)}; "
            "use {question} and {ocr} (double other braces: {{ }})"
        )
    return fields


def render_prompt(template: str, *, question: str, ocr: str) -> str:
    question = " ".join(question.split())[:QUESTION_MAX_CHARS]
    return template.format(question=question or "(none)", ocr=ocr[:OCR_MAX_CHARS] or "(none)")


def question_of(message: Any) -> str:
    """The text a user wrote beside the image: the text parts of its message."""
    if not isinstance(message, dict):
        return ""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return ""
    texts = [
        str(part.get("text", ""))
        for part in content
        if isinstance(part, dict) and part.get("type") == "text"
    ]
    return "\n".join(text for text in texts if text)
