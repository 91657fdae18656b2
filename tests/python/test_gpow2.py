"""GPoW-2: gpu-attestor's CPU reference (`gpu-attestor roots`, every key and root as JSON, and the
guide's mode) against the independent Python implementation of GPOW.md in gpow2_reference.py."""

import json
import subprocess

import pytest

from conftest import BIN
import gpow2_reference as ref


def attestor(*args):
    return subprocess.run([str(BIN / "gpu-attestor"), "roots", *args],
                          capture_output=True, text=True, timeout=120)


def rust(*args):
    out = attestor(*args)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_philox_known_answers():
    assert ref.philox4x32_10((0, 0, 0, 0), (0, 0)) == (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)
    assert ref.philox4x32_10((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2) == (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)
    assert ref.philox4x32_10((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0)) == (
        0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)


def test_fnv_pick_and_merkle_shapes():
    assert ref.fnv(1, 0) == 0x01000193 and ref.fnv(0xFFFFFFFF, 0) == (-0x01000193) & 0xFFFFFFFF
    assert ref.pick(0xFFFFFFFF, 10) == 9 and ref.pick(0x80000000, 1 << 22) == 1 << 21
    leaves = [bytes([i]) * 32 for i in range(3)]
    node = lambda l, r: ref.sha256(b"\x01", l, r)
    assert ref.merkle_root(leaves) == node(node(leaves[0], leaves[1]), leaves[2])
    assert ref.merkle_root(leaves[:1]) == leaves[0]


# (seed, dim, count, items): one tile and many, one product and several, no phase B, the
# smallest dataset (2 lanes) and larger ones, seed 2^64-1.
PLAIN = [
    (12345, 16, 1, 64),
    (12345, 16, 3, 0),
    (1, 32, 2, 32),
    (2**64 - 1, 48, 2, 96),
    (7, 64, 1, 1024),
    (0, 16, 1, 4096),
]


@pytest.mark.parametrize("seed,dim,count,items", PLAIN)
@pytest.mark.parametrize("isa", ["scalar", "auto"])
def test_plain_mode_matches_the_reference(seed, dim, count, items, isa):
    out = rust("--seed", str(seed), "--matrix-dim", str(dim), "--num-matrices", str(count),
               "--dataset-items", str(items), "--isa", isa, "--threads", "2")
    expected = ref.prove(ref.plain_challenge(seed, dim, count, items))
    assert out["master"] == expected["master"]
    assert out["gpus"] == expected["gpus"]
    assert (out["checksum"], out["memory_checksum"]) == ref.checksums(seed, dim, count, items)


def test_multi_gpu_challenge_matches_the_reference(tmp_path):
    """Three GPUs with different shapes (m, n, k all different), one without phase B, non-zero
    nonce, keys and walk nonce: the canonical encoding and every per-GPU key are exercised."""
    challenge = ref.MULTI_GPU_CHALLENGE
    walk_nonce = bytes([0xA5]) * 32
    as_json = dict(challenge)
    for field in ("seed", "nonce", "executor_key", "validator_key"):
        as_json[field] = challenge[field].hex()
    path = tmp_path / "challenge.json"
    path.write_text(json.dumps(as_json))
    expected = ref.prove(challenge, walk_nonce)
    for isa in ("scalar", "auto"):
        out = rust("--challenge", str(path), "--walk-nonce", walk_nonce.hex(), "--isa", isa)
        assert out["master"] == expected["master"]
        assert out["gpus"] == expected["gpus"]
    # GPUs 0 and 2 have their own keys and roots; GPU 1 has no phase B.
    gpus = expected["gpus"]
    assert gpus[1]["root_b"] is None and gpus[0]["root_b"] != gpus[2]["root_b"]
    assert len({tuple(map(tuple, g["keys"])) for g in gpus}) == 3


def test_bad_challenges_are_refused_naming_the_field(tmp_path):
    out = attestor("--seed", "1", "--matrix-dim", "24", "--num-matrices", "1")
    assert out.returncode == 1 and "gpus[0].m = 24" in out.stderr
    out = attestor("--seed", "1", "--matrix-dim", "16", "--num-matrices", "1", "--dataset-items", "48")
    assert out.returncode == 1 and "gpus[0].items = 48" in out.stderr
    path = tmp_path / "challenge.json"
    c = ref.plain_challenge(1, 16, 1)
    c = {**c, **{f: c[f].hex() for f in ("seed", "nonce", "executor_key", "validator_key")}}
    c["gpus"] = [{"m": 16, "n": 16, "k": 16, "count": 1, "items": 0, "extra": 1}]
    path.write_text(json.dumps(c))
    out = attestor("--challenge", str(path))
    assert out.returncode == 1 and "unknown field `extra`" in out.stderr
    c["gpus"] = []
    path.write_text(json.dumps(c))
    out = attestor("--challenge", str(path))
    assert out.returncode == 1 and "gpus: 0 entries" in out.stderr


@pytest.mark.parametrize("seed,dim,count,items", PLAIN)
def test_guide_mode_prints_the_reference_checksums(seed, dim, count, items):
    """The guide's command prints `Checksum: hex(R_A,0)` and, with phase B, `Memory checksum:`."""
    out = subprocess.run([str(BIN / "gpu-attestor"), "--seed", str(seed), "--matrix-dim", str(dim),
                          "--num-matrices", str(count), "--dataset-items", str(items), "--backend", "cpu"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    root_a, root_b = ref.checksums(seed, dim, count, items)
    assert lines[0].startswith("GPU Model: ") and lines[1].startswith("Challenge completed in ")
    assert lines[2] == f"Checksum: {root_a}"
    assert lines[3:] == ([f"Memory checksum: {root_b}"] if root_b else [])
