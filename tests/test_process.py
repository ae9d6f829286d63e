"""The CLI's process policies (polysem.util.process). Freed memory stays in the heap: a large block comes from
the heap, not from its own mapping, which glibc's mallinfo2 tells apart (hblkhd: bytes in mmapped blocks,
before and after the block). OpenMP's spin count is set before torch loads libgomp, unless the user chose one."""

import os
import platform
import subprocess
import sys

import pytest

glibc_only = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc only")

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


@glibc_only
def test_glibc_maps_a_large_block_by_default():
    assert mapped_bytes("pass") >= 64 * 2**20


@glibc_only
def test_keep_freed_memory_takes_large_blocks_from_the_heap():
    assert mapped_bytes("from polysem.util.process import keep_freed_memory\nassert keep_freed_memory()") == 0


@glibc_only
def test_the_cli_keeps_freed_memory():
    setup = ("sys.argv = ['polysem', '--version']\nfrom polysem.cli.app import main\n"
             "try:\n    main()\nexcept SystemExit:\n    pass")
    assert mapped_bytes(setup) == 0


CLI_ENV = r"""
import os, sys
sys.argv = ['polysem', '--version']
from polysem.cli.app import main
assert 'torch' not in sys.modules  # libgomp reads GOMP_SPINCOUNT when torch loads it: after main() sets it
try:
    main()
except SystemExit:
    pass
import ctypes, glob, torch
# the level c10 took when torch loaded (0 info, 1 warning, 2 error), read from libc10's own flag
libc10 = ctypes.CDLL(glob.glob(os.path.join(os.path.dirname(torch.__file__), 'lib', 'libc10.*'))[0])
print(os.environ.get('GOMP_SPINCOUNT'), os.environ.get('OMP_WAIT_POLICY'),
      ctypes.c_int.in_dll(libc10, 'FLAGS_caffe2_log_level').value)
"""


@pytest.mark.parametrize("own, expected", [({}, "1000 None 2"), ({"GOMP_SPINCOUNT": "5", "TORCH_CPP_LOG_LEVEL": "INFO"},
                                                                   "5 None 0"),
                                            ({"OMP_WAIT_POLICY": "active"}, "None active 2")])
def test_the_cli_shortens_openmp_spins_and_quiets_cpp_warnings_before_torch_loads_unless_the_user_chose(own, expected):
    """torch's C++ warnings (TORCH_CPP_LOG_LEVEL) are errors only: a command names each failure itself."""
    env = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY", "TORCH_CPP_LOG_LEVEL")}
    result = subprocess.run([sys.executable, "-c", CLI_ENV], capture_output=True, text=True, check=True, env=env | own)
    assert result.stdout.split()[-3:] == expected.split()
