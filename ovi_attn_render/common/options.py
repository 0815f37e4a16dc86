"""Parsers for numeric command-line options, so a bad value gets our one sentence (naming
the flag and an example) instead of the CLI library's message. Torch-free; used by every
command (`typer.Option(..., parser=whole_number("--seed", "42"))`)."""

from __future__ import annotations

from typing import Callable

from ovi_attn_render.common.errors import UserError


def whole_number(flag: str, example: str) -> Callable[[str], int]:
    def parse(text) -> int:
        if isinstance(text, int):
            return text
        try:
            return int(str(text).strip())
        except ValueError:
            raise UserError(f"{flag} '{text}' is not a whole number; give one like {flag} {example}.") from None

    return parse


def number(flag: str, example: str) -> Callable[[str], float]:
    def parse(text) -> float:
        if isinstance(text, (int, float)):
            return float(text)
        try:
            return float(str(text).strip())
        except ValueError:
            raise UserError(f"{flag} '{text}' is not a number; give one like {flag} {example}.") from None

    return parse
