import os
import platform
import subprocess
import sys

import pytest

from nesfgen.allocator import SWITCH, keep_freed_memory

glibc_only = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="mallopt settings apply to glibc only"
)


def test_switched_off_it_leaves_malloc_alone(monkeypatch):
    monkeypatch.setenv(SWITCH, "0")
    assert keep_freed_memory() is False


@glibc_only
def test_glibc_accepts_the_settings(monkeypatch):
    monkeypatch.delenv(SWITCH, raising=False)
    assert keep_freed_memory() is True


REFILL = """
import resource, torch
from nesfgen.allocator import keep_freed_memory
keep_freed_memory()
for _ in range(10):  # 64 MB blocks: the heap settles after a few (aligned blocks first leave gaps)
    torch.ones(1 << 24)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    torch.ones(1 << 24)  # allocated, written and freed, as the estimator's activations are
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@glibc_only
@pytest.mark.parametrize("switch", ["0", "1"])
def test_freed_blocks_are_reused_instead_of_faulted_in_again(switch):
    env = {**os.environ, SWITCH: switch}
    faults = int(subprocess.run([sys.executable, "-c", REFILL], env=env, capture_output=True, text=True).stdout)
    pages = 20 * (1 << 26) // 4096  # every page of every block, were each one mapped afresh
    if switch == "0":
        assert faults > pages // 2  # glibc's default: a fresh mmap per block
    else:
        assert faults < pages // 20
