r"""Reading a final answer out of a completion: plain string operations, linear time, safe in the trainer process.

- :func:`extract_last_boxed`: the content of the last ``\boxed{...}`` / ``\boxed x`` / ``\fbox{...}`` (nested and
  escaped braces handled), the answer :mod:`nft_trl.rewards.math_verifier` and the evaluation grade;
- :func:`extract_dapo_strict_box`: the answer verl's ``math_dapo`` strict-box rule reads (the NFT authors' verdict);
- :func:`normalize_answer`: the normal form the ``strict`` mode compares;
- :func:`completion_text` and :func:`gold_text`: the text of a TRL completion (standard or conversational) and the
  gold answer of a ``solution`` value.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any


# verl's `math_dapo` rule, which the NFT authors train with: it keeps the answer's last 300 characters, and its strict
# box check then looks only at the last 100 of those (so in effect the last 100 characters).
DAPO_TAIL_CHARS = 300
DAPO_STRICT_BOX_TAIL_CHARS = 100
_DAPO_BOX_OPEN = "\\boxed{"

_BOX_COMMANDS = ("\\boxed", "\\fbox")


@dataclass(frozen=True)
class Boxed:
    """Result of looking for the last box: ``found`` is False when there is none; ``content`` None if unclosed."""

    found: bool
    content: str | None = None


def find_last_box(text: str) -> Boxed:
    start = -1
    command = ""
    for name in _BOX_COMMANDS:
        position = text.rfind(name)
        while position >= 0 and text[position + len(name) : position + len(name) + 1].isalpha():
            position = text.rfind(name, 0, position)  # e.g. "\boxedtext" is another command
        if position > start:
            start, command = position, name
    if start < 0:
        return Boxed(found=False)
    i = start + len(command)
    while i < len(text) and text[i].isspace():
        i += 1
    if i >= len(text):
        return Boxed(found=True)
    if text[i] != "{":  # "\boxed 5": the box holds the next token
        end = i
        while end < len(text) and not text[end].isspace() and text[end] not in "$}":
            end += 1
        token = text[i:end].rstrip(".,;")
        return Boxed(found=True, content=token or None)
    depth = 0
    j = i
    while j < len(text):
        char = text[j]
        if char == "\\":
            j += 2  # an escaped character, e.g. the set braces "\{" and "\}", never closes the box
            continue
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return Boxed(found=True, content=text[i + 1 : j])
        j += 1
    return Boxed(found=True)  # unclosed: the completion was truncated inside its answer


def extract_last_boxed(text: str) -> str | None:
    r"""Return the content of the last ``\boxed{...}`` / ``\boxed x`` / ``\fbox{...}`` in ``text``, or None.

    Nested braces are matched; escaped braces (``\{``) do not count. An unclosed last box gives None.

    >>> extract_last_boxed(r"first \boxed{1}, then \boxed{\frac{a}{b}}")
    '\\frac{a}{b}'
    """
    return find_last_box(text).content


def extract_dapo_strict_box(text: str) -> str | None:
    r"""The answer verl's ``math_dapo`` strict-box rule reads: the content of the last ``\boxed{`` in the last 100 characters.

    The rule, as the NFT authors train with it: keep the last ``DAPO_TAIL_CHARS`` (300) characters, then the last
    ``DAPO_STRICT_BOX_TAIL_CHARS`` (100) of those; find the last literal ``\boxed{`` there and match braces by plain
    counting (every ``{`` opens, every ``}`` closes; no escapes). No box there, or a box that does not close before
    the end, gives None. Nothing is stripped or normalised.

    >>> extract_dapo_strict_box(r"so the answer is \boxed{\frac{1}{2}}.")
    '\\frac{1}{2}'
    >>> extract_dapo_strict_box(r"\boxed{7}" + " " * 100) is None  # the box lies outside the last 100 characters
    True
    """
    tail = text[-DAPO_TAIL_CHARS:][-DAPO_STRICT_BOX_TAIL_CHARS:]
    start = tail.rfind(_DAPO_BOX_OPEN)
    if start < 0:
        return None
    depth = 0
    for end in range(start + len(_DAPO_BOX_OPEN) - 1, len(tail)):
        if tail[end] == "{":
            depth += 1
        elif tail[end] == "}":
            depth -= 1
            if depth == 0:
                return tail[start + len(_DAPO_BOX_OPEN) : end]
    return None


def completion_text(completion: Any) -> str:
    """Text of a standard (str) or conversational (list of messages) completion; the last assistant message counts."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        completion = [completion]
    if isinstance(completion, (list, tuple)):
        for message in reversed(completion):
            if isinstance(message, dict) and message.get("role", "assistant") == "assistant":
                content = message.get("content")
                if isinstance(content, list):  # multimodal parts: [{"type": "text", "text": ...}, ...]
                    content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
                return content if isinstance(content, str) else ""
    return ""


_TEXT_COMMAND = re.compile(r"\\(?:text|textbf|textrm|mathrm|mbox|mathbf)\s*\{([^{}]*)\}")
_DEGREE = re.compile(r"\^\s*\{?\\circ\}?")
_THOUSANDS = re.compile(r"(?<=\d)(?:,|\{,\})(?=\d{3}(?!\d))")
_SPACING = re.compile(r"\\[,;:! ]|~|\s+")
_FRAC_VARIANT = re.compile(r"\\[dt]frac")
_SIZING = re.compile(r"\\(?:left|right)(?![a-zA-Z])")


def normalize_answer(answer: str) -> str:
    r"""Normalise a final answer for the strict (string-match) mode.

    Keeps the part after the last ``=``, unwraps ``\text{}``-like commands, drops ``$``, spacing commands, whitespace,
    ``\left``/``\right``, degree marks, ``\%``, thousands separators and a trailing period, and writes
    ``\dfrac``/``\tfrac`` as ``\frac``. Two answers match in strict mode when their normal forms are equal.

    >>> normalize_answer(r" x = 1{,}000 \text{ cm}. ")
    '1000cm'
    """
    text = answer.strip().strip("$")
    if "=" in text:
        text = text.rsplit("=", 1)[1]
    text = _TEXT_COMMAND.sub(r"\1", text)
    text = _DEGREE.sub("", text)
    text = text.replace("\\%", "").replace("%", "").replace("$", "")
    text = _FRAC_VARIANT.sub(r"\\frac", text)
    text = _SIZING.sub("", text)
    text = _SPACING.sub("", text)
    text = _THOUSANDS.sub("", text)
    return text.rstrip(".")


def gold_text(solution: Any) -> str:
    """The gold answer to grade against: the last box of a worked solution, else the column value itself."""
    if solution is None:
        return ""
    text = str(solution).strip()
    boxed = find_last_box(text)
    if boxed.found and boxed.content is not None:
        text = boxed.content.strip()
    if len(text) >= 2 and text[0] == text[-1] == "$":
        text = text.strip("$").strip()
    return text
