"""Start reading the weights file into the page cache while the process is still importing.

A fresh container reads the checkpoint from disk (or a lazily pulled image
layer) for the first time; the loader then faults it in piece by piece while
prepacking. Asking the kernel for the whole file up front (POSIX_FADV_WILLNEED,
asynchronous readahead) lets the disk work during the ~2 s of Python imports
that come first. Only torch-free modules here: Gunicorn's config calls this
before it imports torch.
"""

from __future__ import annotations

import os
import threading

_CHUNK = 8 * 2**20


def prefetch(path: str) -> bool:
    """Ask the kernel to read ``path`` ahead, from a short-lived thread; False when it is not a file."""
    if not hasattr(os, "posix_fadvise") or not os.path.isfile(path):
        return False  # a pretrained tag: its file is only known once open_clip resolves it

    def read_ahead() -> None:
        try:
            fd = os.open(path, os.O_RDONLY)
            try:
                size = os.fstat(fd).st_size
                # Piece by piece: Linux reads only the first few MiB of one
                # hint for the whole file (8 MiB measured here).
                for offset in range(0, size, _CHUNK):
                    os.posix_fadvise(fd, offset, _CHUNK, os.POSIX_FADV_WILLNEED)
            finally:
                os.close(fd)
        except OSError:
            pass  # only a hint: the loader reads the file either way

    # A thread, because each hint blocks while the kernel queues its reads.
    threading.Thread(target=read_ahead, name="prefetch-weights", daemon=True).start()
    return True
