import ctypes.util
import platform

import pytest

from nesfgen.allocator import SWITCH, keep_freed_memory


def test_switched_off_it_leaves_malloc_alone(monkeypatch):
    monkeypatch.setenv(SWITCH, "0")
    assert keep_freed_memory() is False


@pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc" or ctypes.util.find_library("c") is None,
    reason="mallopt settings apply to glibc only",
)
def test_glibc_accepts_the_settings(monkeypatch):
    monkeypatch.delenv(SWITCH, raising=False)
    assert keep_freed_memory() is True
