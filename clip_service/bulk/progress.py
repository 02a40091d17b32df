"""The progress bar (items/s, failures so far, ETA) on a terminal; nothing until the summary line elsewhere."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field

from tqdm import tqdm


@dataclass
class Tally:
    """Counts of this run, for the bar and the summary line."""

    total: int  # items in INPUT
    already: int  # items with a row before this run
    embedded: int = 0
    failed: int = 0
    started: float = field(default_factory=time.monotonic)

    @property
    def done(self) -> int:
        return self.embedded + self.failed

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def rate(self) -> float:
        return self.done / max(1e-9, self.elapsed())


class Progress:
    """A tqdm bar over the items left to do; disabled when ``enabled`` is false."""

    def __init__(self, tally: Tally, enabled: bool):
        self.tally = tally
        self.bar = tqdm(total=tally.total - tally.already, unit="item", desc="embedding", file=sys.stderr,
                        disable=not enabled, dynamic_ncols=True, smoothing=0.05, mininterval=0.5)
        self.bar.set_postfix(failed=0, refresh=False)

    def advance(self, embedded: int, failed: int) -> None:
        self.tally.embedded += embedded
        if failed:
            self.tally.failed += failed
            self.bar.set_postfix(failed=self.tally.failed, refresh=False)
        self.bar.update(embedded + failed)

    def close(self) -> None:
        self.bar.close()
