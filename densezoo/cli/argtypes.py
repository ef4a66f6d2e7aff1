"""argparse types for the tools' arguments: out-of-range numbers and unknown devices are one-line usage errors."""
import argparse
import re
from typing import Callable, Optional

__all__ = ['int_at_least', 'int_between', 'float_at_least', 'device_name']


def _number(text: str, kind: type, name: str):
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'must be {name}, got {text!r}') from None


def int_between(low: int, high: Optional[int] = None) -> Callable[[str], int]:
    """An integer in ``[low, high]`` (no upper bound for ``high=None``)."""
    def parse(text: str) -> int:
        value = _number(text, int, 'an integer')
        if value < low:
            raise argparse.ArgumentTypeError(f'must be at least {low}, got {value}')
        if high is not None and value > high:
            raise argparse.ArgumentTypeError(f'must be at most {high}, got {value}')
        return value
    return parse


def int_at_least(low: int) -> Callable[[str], int]:
    """An integer of at least ``low``: "argument --iters: must be at least 1, got 0"."""
    return int_between(low)


def float_at_least(low: float) -> Callable[[str], float]:
    """A finite number of at least ``low``."""
    def parse(text: str) -> float:
        value = _number(text, float, 'a number')
        if not value >= low or value == float('inf'):
            raise argparse.ArgumentTypeError(f'must be a number of at least {low:g}, got {text}')
        return value
    return parse


def device_name(*kinds: str) -> Callable[[str], str]:
    """A device of the kinds ``kinds`` (e.g. 'cpu', 'cuda', 'mps'); 'cuda' also allows 'cuda:N'."""
    pattern = re.compile('|'.join(f'{kind}(:[0-9]+)?' if kind == 'cuda' else kind for kind in kinds))
    choices = ', '.join(f'{kind}, cuda:N' if kind == 'cuda' else kind for kind in kinds)

    def parse(text: str) -> str:
        if not pattern.fullmatch(text):
            raise argparse.ArgumentTypeError(f'must be one of {choices}, got {text!r}')
        return text
    return parse
