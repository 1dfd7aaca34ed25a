r"""The Countdown verdict: does the boxed expression reach the target using each given number exactly once?

A Countdown problem gives a few numbers and a target (``Make 22 from 3, 5, 7``); an answer is an arithmetic expression
in the last ``\boxed{}`` (``\boxed{3*5+7}``). Unlike a math answer it has no single gold string: every expression
that uses the given numbers (each exactly once, all of them) and evaluates to the target is right, so a wrong answer
is a different plan rather than a near miss. `countdown_reward` follows TRL's reward signature, reading the dataset
columns `numbers` (a list of integers) and `target` (an integer).

The expression is parsed by a small recursive-descent parser (never `eval`): integers, ``+ - * /`` (also
``\times``, ``\cdot``, ``\div``, ``×``, ``÷``), parentheses and spaces; no unary minus, no other symbols. It is
evaluated exactly with fractions, so ``7/2*2`` is 7 and a division by zero makes the answer wrong.

>>> countdown_reward(["\\boxed{3*5+7}", "\\boxed{22}"], numbers=[[3, 5, 7], [3, 5, 7]], target=[22, 22])
[1.0, 0.0]
"""

from __future__ import annotations

from collections import Counter
from fractions import Fraction
from typing import Any

from .answers import completion_text, extract_last_boxed


_SYNONYMS = (("\\times", "*"), ("\\cdot", "*"), ("\\div", "/"), ("×", "*"), ("÷", "/"))
_OPERATORS = "+-*/"
# An expression longer than this is not a Countdown answer (and keeps the parser's recursion shallow).
MAX_EXPRESSION_CHARS = 200


class ExpressionError(ValueError):
    """The boxed text is not an expression of the Countdown grammar (the message says why)."""


def _tokens(text: str) -> list[str]:
    for name, symbol in _SYNONYMS:
        text = text.replace(name, symbol)
    tokens: list[str] = []
    i = 0
    while i < len(text):
        char = text[i]
        if char.isspace():
            i += 1
        elif char.isdigit():
            j = i
            while j < len(text) and text[j].isdigit():
                j += 1
            tokens.append(text[i:j])
            i = j
        elif char in _OPERATORS or char in "()":
            tokens.append(char)
            i += 1
        else:
            raise ExpressionError(f"unexpected character {char!r}")
    return tokens


class _Parser:
    """expression := term (('+' | '-') term)*; term := factor (('*' | '/') factor)*; factor := int | '(' expr ')'."""

    def __init__(self, tokens: list[str]):
        self.tokens, self.position, self.numbers = tokens, 0, []

    def peek(self) -> str | None:
        return self.tokens[self.position] if self.position < len(self.tokens) else None

    def take(self) -> str:
        token = self.peek()
        if token is None:
            raise ExpressionError("the expression ends too early")
        self.position += 1
        return token

    def expression(self) -> Fraction:
        value = self.term()
        while self.peek() in ("+", "-"):
            value = value + self.term() if self.take() == "+" else value - self.term()
        return value

    def term(self) -> Fraction:
        value = self.factor()
        while self.peek() in ("*", "/"):
            operator, right = self.take(), self.factor()
            if operator == "*":
                value *= right
            elif right == 0:
                raise ExpressionError("division by zero")
            else:
                value /= right
        return value

    def factor(self) -> Fraction:
        token = self.take()
        if token == "(":
            value = self.expression()
            if self.take() != ")":
                raise ExpressionError("unbalanced parenthesis")
            return value
        if token.isdigit():
            self.numbers.append(int(token))
            return Fraction(int(token))
        raise ExpressionError(f"expected a number or '(', got {token!r}")


def evaluate_expression(text: str) -> tuple[Fraction, list[int]]:
    """The exact value of a Countdown expression and the numbers it uses, in order; `ExpressionError` if invalid."""
    if len(text) > MAX_EXPRESSION_CHARS:
        raise ExpressionError(f"longer than {MAX_EXPRESSION_CHARS} characters")
    tokens = _tokens(text)
    if not tokens:
        raise ExpressionError("empty expression")
    parser = _Parser(tokens)
    value = parser.expression()
    if parser.peek() is not None:
        raise ExpressionError(f"unexpected {parser.peek()!r} after the expression")
    return value, parser.numbers


def countdown_verdict(answer: str | None, numbers: list[int], target: int) -> bool:
    """Whether `answer` (the boxed text, or None) uses exactly the multiset `numbers` and evaluates to `target`."""
    if answer is None:
        return False
    try:
        value, used = evaluate_expression(answer)
    except (ExpressionError, RecursionError):
        return False
    return Counter(used) == Counter(int(n) for n in numbers) and value == target


def _check_columns(numbers: Any, target: Any, count: int) -> None:
    if numbers is None or target is None:
        raise ValueError(
            "countdown_reward needs the dataset columns 'numbers' (a list of integers per row) and 'target' (an "
            "integer per row)."
        )
    if len(numbers) != count or len(target) != count:
        raise ValueError(
            f"countdown_reward got {count} completions but {len(numbers)} 'numbers' and {len(target)} 'target' "
            "values; TRL passes one value of each column per completion."
        )


def countdown_reward(completions: list, numbers: list[list[int]], target: list[int], **kwargs: Any) -> list[float]:
    """TRL reward: 1.0 when the last boxed expression reaches `target` using each of `numbers` exactly once, else 0.0.

    Completions may be standard (strings) or conversational (message lists); a missing or unclosed box is wrong.
    Ignores TRL's other keyword arguments (`prompts`, `completion_ids`, other dataset columns).
    """
    _check_columns(numbers, target, len(completions))
    rewards = []
    for completion, row_numbers, row_target in zip(completions, numbers, target, strict=True):
        answer = extract_last_boxed(completion_text(completion))
        rewards.append(1.0 if countdown_verdict(answer, row_numbers, int(row_target)) else 0.0)
    return rewards


countdown_reward.required_columns = ("numbers", "target")  # checked at the trainer's construction (rewards.columns)
