"""The CLI keeps freed memory in the heap (polysem.util.memory): a large block comes from the heap,
not from its own mapping, which glibc's mallinfo2 tells apart (hblkhd: bytes in mmapped blocks, before and after the block)."""

import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc only")

MAPPED_BYTES_OF_A_64_MIB_BLOCK = r"""
import ctypes, sys
class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
SETUP
before = libc.mallinfo2().hblkhd
block = libc.malloc(64 * 2**20)
print(libc.mallinfo2().hblkhd - before)
libc.free(block)
"""


def mapped_bytes(setup: str) -> int:
    code = MAPPED_BYTES_OF_A_64_MIB_BLOCK.replace("SETUP", setup)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(result.stdout.split()[-1])


def test_glibc_maps_a_large_block_by_default():
    assert mapped_bytes("pass") >= 64 * 2**20


def test_keep_freed_memory_takes_large_blocks_from_the_heap():
    assert mapped_bytes("from polysem.util.memory import keep_freed_memory\nassert keep_freed_memory()") == 0


def test_the_cli_keeps_freed_memory():
    setup = ("sys.argv = ['polysem', '--version']\nfrom polysem.cli.app import main\n"
             "try:\n    main()\nexcept SystemExit:\n    pass")
    assert mapped_bytes(setup) == 0
