"""PerProcess: a value made once per process, and made afresh in a forked child."""

from __future__ import annotations

import os
import threading

from clip_service.process_local import PerProcess


def test_the_value_is_made_once_per_process_even_under_contention():
    made = []
    value = PerProcess(lambda: made.append(1) or object())
    seen = []
    threads = [threading.Thread(target=lambda: seen.append(value.get())) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5)
    assert len(made) == 1 and len({id(v) for v in seen}) == 1 and value.made


def test_a_forked_child_makes_its_own_value():
    value = PerProcess(lambda: os.getpid())
    assert value.get() == os.getpid()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report what it sees, then leave without running pytest's teardown
        try:
            os.write(write, f"{int(value.made)} {value.get()} {os.getpid()}".encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        made_before, got, child = map(int, pipe.read().split())
    os.waitpid(pid, 0)
    assert made_before == 0 and got == child != os.getpid()
    assert value.get() == os.getpid()  # the parent keeps its own
