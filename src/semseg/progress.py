"""Progress bars that suit where the output goes."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any

from tqdm import tqdm


def progress_bar(iterable: Iterable[Any] | None = None, *, desc: str, enabled: bool = True, **kwargs: Any) -> tqdm:
    """A tqdm bar on a terminal; none when stderr is a file or a pipe.

    Redirected to a log, tqdm writes a line per update (thousands per epoch); the trainer
    and the commands print their own one-line summaries there instead.
    """
    return tqdm(iterable, desc=desc, disable=not enabled or not sys.stderr.isatty(), dynamic_ncols=True, **kwargs)
