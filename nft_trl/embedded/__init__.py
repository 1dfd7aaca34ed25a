"""The embedded offline demo: a math task, its tokenizer and a small warmed-up model, and the demo itself."""

from .model import *  # noqa: F403
