"""gpu-attestor against an independent Python implementation of the specification."""

import json
import subprocess

import pytest

from conftest import BIN
from gpow_reference import checksum, philox4x32_10


def test_philox_known_answers():
    assert philox4x32_10((0, 0, 0, 0), (0, 0)) == (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)
    assert philox4x32_10((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2) == (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)


@pytest.mark.parametrize("seed,dim,count", [(12345, 16, 1), (12345, 16, 3), (1, 32, 2), (2**64 - 1, 48, 5)])
def test_cpu_checksum_matches_the_reference(seed, dim, count):
    out = subprocess.run(
        [str(BIN / "gpu-attestor"), "--seed", str(seed), "--matrix-dim", str(dim), "--num-matrices", str(count),
         "--backend", "cpu", "--json"],
        check=True, capture_output=True, text=True, timeout=60,
    )
    assert json.loads(out.stdout)["checksum"] == checksum(seed, dim, count)
