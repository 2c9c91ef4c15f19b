"""Warnings grouped by cause, so a dataset never gets one warning line per row for the same reason.

``data validate`` and ``data convert`` both feed their warnings here as they find them
(``add(rule, where, message)``) and print :meth:`WarningSummary.lines` once at the end. A cause
seen once is printed as the usual ``WHERE: warning: MESSAGE [rule]`` line; a cause seen on many
rows is one warning: how many rows, the first few as examples, and how to silence it (fix the
cause where the caller knows how, or ``--ignore RULE``). Ignored rules are counted, not printed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Mapping

from paddle_ocrvl_sft.errors import UsageError

EXAMPLES = 3


@dataclass
class _Cause:
    count: int = 0
    examples: list[tuple[str, str]] = field(default_factory=list)  # (where, message), the first EXAMPLES


class WarningSummary:
    """Collects warnings by rule in constant memory (a count and a few examples per rule).

    ``hints`` maps a rule to the way to fix its cause, said in the summary of a repeated rule;
    ``ignore`` lists rules to count without printing: with ``hints`` (the command's warning rules),
    each must be one of them, else a UsageError (``--ignore`` of a typo or of an error rule).
    """

    def __init__(self, *, hints: Mapping[str, str] | None = None, ignore: Iterable[str] = (), examples: int = EXAMPLES):
        ignore = list(ignore)
        for rule in ignore if hints is not None else ():
            if rule not in hints:
                raise UsageError(f"--ignore {rule}: not a warning rule (errors cannot be ignored; the warnings are "
                                 f"{', '.join(hints)})")
        self.hints = dict(hints or {})
        self.ignore = frozenset(ignore)
        self.examples = examples
        self.causes: dict[str, _Cause] = {}  # in the order each rule was first seen
        self.ignored: dict[str, int] = {}

    def add(self, rule: str, where: str, message: str) -> bool:
        """Record one warning; False when its rule is ignored."""
        if rule in self.ignore:
            self.ignored[rule] = self.ignored.get(rule, 0) + 1
            return False
        cause = self.causes.setdefault(rule, _Cause())
        cause.count += 1
        if len(cause.examples) < self.examples:
            cause.examples.append((where, message))
        return True

    @property
    def count(self) -> int:
        """Warnings recorded and not ignored."""
        return sum(cause.count for cause in self.causes.values())

    def lines(self) -> list[str]:
        """One entry per rule: the warning itself when it happened once, else a summary with examples."""
        out: list[str] = []
        for rule, cause in self.causes.items():
            if cause.count == 1:
                where, message = cause.examples[0]
                out.append(f"{where}: warning: {message} [{rule}]")
                continue
            shown = len(cause.examples)
            which = f"all {shown}" if shown == cause.count else f"the first {shown}"
            fix = self.hints.get(rule)
            silence = f"{fix}, or pass --ignore {rule}" if fix else f"pass --ignore {rule}"
            out.append(f"warning: [{rule}] on {cause.count} rows ({which} below); to silence it: {silence}")
            out += [f"  {where}: {message}" for where, message in cause.examples]
        if self.ignored:
            out.append("ignored (--ignore): " + ", ".join(f"{rule}={n}" for rule, n in sorted(self.ignored.items())))
        return out
