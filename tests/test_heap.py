"""The fixed glibc mmap threshold (alignlab.heap): off by default, opt-in from the environment."""

import os
import subprocess
import sys

import pytest

from alignlab.heap import DEFAULT_THRESHOLD, ENV, MEMORY_SAVING_THRESHOLD, fix_mmap_threshold, mmap_threshold_setting

# A child process frees a 4 MiB block, then allocates a 2 MiB one and says whether it lies in the
# brk heap. With glibc's dynamic threshold the free raised the threshold to 4 MiB, so the 2 MiB
# block comes from the heap (where freed memory can stay resident); with the fixed 1 MiB threshold
# it is its own mapping (returned to the system when freed).
CHILD = """
import ctypes, ctypes.util, sys
sys.path[:0] = {path!r}
from alignlab.heap import fix_mmap_threshold
if {apply}:
    assert fix_mmap_threshold(1 << 20)
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)
libc.free(libc.malloc(4 << 20))
address = libc.malloc(2 << 20)
for line in open("/proc/self/maps"):
    span, *rest = line.split()
    low, high = (int(x, 16) for x in span.split("-"))
    if low <= address < high:
        print("heap" if line.rstrip().endswith("[heap]") else "mapping")
"""


def _where_a_2mib_block_lives(apply: bool) -> str:
    code = CHILD.format(path=sys.path, apply=apply)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")})
    return out.stdout.strip()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc behaviour")
def test_fixed_threshold_keeps_large_blocks_out_of_the_heap():
    assert _where_a_2mib_block_lives(False) == "heap"
    assert _where_a_2mib_block_lives(True) == "mapping"


def test_setting_from_environment(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    assert mmap_threshold_setting() == DEFAULT_THRESHOLD == 0 and fix_mmap_threshold() is False
    monkeypatch.setenv(ENV, str(MEMORY_SAVING_THRESHOLD))
    assert mmap_threshold_setting() == 1 << 20
    monkeypatch.setenv(ENV, "0")
    assert mmap_threshold_setting() == 0 and fix_mmap_threshold() is False
    monkeypatch.setenv(ENV, "2MB")
    with pytest.raises(ValueError, match="ALIGNLAB_MMAP_THRESHOLD='2MB': expected a number"):
        mmap_threshold_setting()
    monkeypatch.setenv(ENV, "-1")
    with pytest.raises(ValueError, match="must be >= 0"):
        mmap_threshold_setting()
