"""The memory of a mapped checkpoint: pages handed back as prepacking replaces them, the rest copied in.

On CPU the mapping does not outlive the load: prepacking (prepacked.py)
replaces the big matrices with packed copies and the mapped pages they came
from are dropped as it goes (``MappedPages``), which keeps the file's size out
of the peak memory of the load; the remaining tensors are then copied into the
process's own memory (``own_tensors``). So a checkpoint replaced on disk later
cannot change or fault the served weights.
"""

from __future__ import annotations

import os

import torch
from torch import nn


class MappedPages:
    """Where this process maps a file, to hand back pages of tensors in it that are no longer used.

    ``madvise(MADV_DONTNEED)`` on a file mapping only drops the process's
    copy of the page: a later read maps it from the file again, so releasing
    is never wrong, only slower if the tensor were read again. It is applied
    only to whole pages of tensors that lie inside a mapping of this file;
    anonymous memory (where it would zero the data) is never touched.
    Through ctypes because torch and safetensors own these mappings and
    expose no such call.
    """

    _PAGE = os.sysconf("SC_PAGE_SIZE")
    _MADV_DONTNEED = 4  # Linux
    _madvise = None

    def __init__(self, path: str):
        real = os.path.realpath(path)
        self.ranges = []
        if not os.path.exists("/proc/self/maps"):  # not Linux: nothing is released
            return
        with open("/proc/self/maps") as maps:
            for line in maps:
                fields = line.split(maxsplit=5)
                if len(fields) == 6 and fields[5].rstrip("\n") == real:
                    start, end = (int(x, 16) for x in fields[0].split("-"))
                    self.ranges.append((start, end))
        if self.ranges:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            self._madvise = libc.madvise
            self._madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)

    def release(self, tensors: list[torch.Tensor]) -> None:
        """Drop the pages that lie wholly inside ``tensors`` (each contiguous) and inside the file's mapping."""
        if self._madvise is None:
            return
        for tensor in tensors:
            if tensor.device.type != "cpu" or not tensor.is_contiguous():
                continue
            start = tensor.data_ptr()
            end = start + tensor.numel() * tensor.element_size()
            if not any(low <= start and end <= high for low, high in self.ranges):
                continue
            first, last = -(-start // self._PAGE) * self._PAGE, end // self._PAGE * self._PAGE
            if last > first:
                self._madvise(first, last - first, self._MADV_DONTNEED)


def own_tensors(model: nn.Module) -> None:
    """Copy every parameter and buffer into the process's own memory, releasing the file mapping."""
    for module in model.modules():
        for _, param in module.named_parameters(recurse=False):
            param.data = param.data.clone()
        # Every name, also two naming one tensor: each gets its own copy, none stays mapped.
        for name, buffer in list(module.named_buffers(recurse=False, remove_duplicate=False)):
            setattr(module, name, buffer.clone())
