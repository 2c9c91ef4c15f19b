"""One module per CLI command; each exposes ``register(subparsers)``."""

import argparse
import math

# --stop-repeats (predict, serve, eval): the numbers are paddle_ocrvl_sft.loop_guard's MAX_PERIOD and
# MIN_SPAN, typed here because building the parser imports only the command shells (tests/test_cli.py);
# tests/test_loop_guard.py keeps them in step
STOP_REPEATS_HELP = ("loop guard (off by default): stop an answer whose last tokens repeat one period of up to "
                     "64 tokens K times (over 32+ tokens) and cut it after the first copy; transformers stops "
                     "during generation, paddle cuts after it (docs/predict.md)")


def int_at_least(minimum: int):
    """argparse type: an integer >= ``minimum`` (a bad value is a usage error, exit 2)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    return parse


positive_int = int_at_least(1)
non_negative_int = int_at_least(0)


def positive_seconds(text: str) -> float:
    """argparse type: a number of seconds > 0 (a bad value is a usage error, exit 2)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value
