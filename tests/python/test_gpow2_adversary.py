"""GPoW-2 adversary suite: `gpu-attestor check` (the validator) against gpow2_prover.py, a prover
written apart from the Rust one, playing honest and playing each cheat a validator must catch
(docs/gpow2-protocol.md's verdict table). First the prover's numpy paths are held to the plain
reference gpow2_reference.py bit for bit, so that a FAIL below is the validator catching a cheat
and never the prover computing wrongly."""

import json
import math
import os
import pathlib
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from conftest import BIN
import gpow2_prover as prover
import gpow2_reference as ref

PROVER = pathlib.Path(__file__).resolve().with_name("gpow2_prover.py")
ATTESTOR = BIN / "gpu-attestor"
GPU_NAME = "Test GPU"
GPU_MEMORY = 80 << 30
HOTKEY_SEED = "0x" + "11" * 32

# The test profile's work, small enough for a Python prover on two cores. Time references were
# chosen from the honest prover's phase times as `check` measured them on the 2-core development
# machine (phase A ≈ 7.5 ms, build ≈ 40 ms, walk ≈ 2.3 ms; the lazy walk ≈ 300 ms) so that the
# honest prover passes and `slow` and `lazy-phase-b` fail, each with at least 3× room (limits are
# 1.25 × reference: phase A 250 ms (33×), build and walk 412.5 ms (9×), walk 37.5 ms (16× for the
# honest walk, 8× under the lazy one).
WORK = {"m": 16, "n": 16, "k": 16, "count": 512, "items": 2048}
TIMES = {"phase_a": 200, "build": 300, "walk": 30}
SLOW_DELAY_S = 3.0  # 12× phase A's limit of 250 ms


# ---------------------------------------------------------------- the prover against the reference


CHALLENGES = {
    # One GPU, plain-mode keys, several products and a dataset with 4 lanes.
    "plain": ref.plain_challenge(7, 32, 3, 64),
    # Three GPUs, m ≠ n ≠ k, one without phase B, non-zero nonce and keys.
    "multi-gpu": ref.MULTI_GPU_CHALLENGE,
}


def test_numpy_philox_known_answers():
    cases = [((0, 0, 0, 0), (0, 0)), ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2),
             ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0))]
    for ctr, key in cases:
        assert tuple(prover.philox_words(*ctr, *key).tolist()) == ref.philox4x32_10(ctr, key)
    # Vectorised over a range of counters and keys at once.
    ctr = np.arange(50, dtype=np.uint32)
    got = prover.philox_words(ctr, ctr * 3, 7, 0xFFFFFFFF, ctr ^ 0x5555, 0xABCDEF01)
    assert got.tolist() == [list(ref.philox4x32_10((c, (3 * c) & 0xFFFFFFFF, 7, 0xFFFFFFFF), (c ^ 0x5555, 0xABCDEF01)))
                            for c in range(50)]


@pytest.mark.parametrize("name", sorted(CHALLENGES))
def test_numpy_paths_match_the_reference(name):
    challenge, walk_nonce = CHALLENGES[name], bytes([0xA5]) * 32
    expected = ref.prove(challenge, walk_nonce)
    master = ref.master(challenge)
    for g, work in enumerate(challenge["gpus"]):
        keys = ref.gpu_keys(master, g)
        want = expected["gpus"][g]
        # Tiny chunks too, so the chunked product trees are exercised.
        for chunk_bytes in (1, 1 << 24):
            a = prover.phase_a(keys, work, chunk_bytes=chunk_bytes)
            assert [r.tobytes().hex() for r in a["roots"]] == want["product_roots"]
            assert prover.root_of(a["levels_a"]).hex() == want["root_a"]
        if not work["items"]:
            continue
        data = prover.dataset(keys, work["items"], prover.Cache(keys["master_g"]), chunk=32)
        assert data.tolist() == ref.dataset(keys, work["items"])
        wkey = ref.walk_key(keys, walk_nonce)
        leaves = prover.phase_b_walk(keys, work, walk_nonce, data)[0][0]
        ref_leaves = [ref.lane_leaf(g, lane, ref.lane_cmix(wkey, data.tolist(), lane))
                      for lane in range(work["items"] // 16)]
        assert [leaf.tobytes() for leaf in leaves] == ref_leaves
        # The lazy walk (no dataset) gives the same R_B,g.
        for data_or_none in (data, None):
            levels = prover.phase_b_walk(keys, work, walk_nonce, data_or_none, prover.Cache(keys["master_g"]))
            assert prover.root_of(levels).hex() == want["root_b"]


def climb(leaf, index, count, path):
    """Recomputes a root from a leaf and its path (GPOW.md's Merkle rules)."""
    node, path = leaf, list(path)
    while count > 1:
        if index ^ 1 < count:
            sibling = bytes.fromhex(path.pop(0))
            node = ref.sha256(b"\x01", node, sibling) if index % 2 == 0 else ref.sha256(b"\x01", sibling, node)
        index, count = index // 2, (count + 1) // 2
    assert not path
    return node


@pytest.mark.parametrize("count", [1, 2, 3, 5, 6, 7, 8, 13])
def test_merkle_paths_climb_to_the_root(count):
    leaves = [bytes([i]) * 32 for i in range(count)]
    levels = prover.merkle_levels(np.frombuffer(b"".join(leaves), dtype=np.uint8).reshape(1, count, 32))
    assert prover.root_of(levels) == ref.merkle_root(leaves)
    for i, leaf in enumerate(leaves):
        assert climb(leaf, i, count, prover.merkle_path(levels, 0, i)) == ref.merkle_root(leaves)


# ---------------------------------------------------------------- the validator against the prover


def profiles(tmp_path, work=WORK, times=TIMES):
    path = tmp_path / "profiles.json"
    path.write_text(json.dumps({
        "schema_version": 1,
        "comment": "test_gpow2_adversary.py: one small GPU profile for the Python prover",
        "profiles": [{
            "id": "test-gpu", "nvml_names": [GPU_NAME], "memory_bytes": GPU_MEMORY,
            "int8_dense_tops": 1, "memory_bandwidth_gb_s": 1, "work": work,
            "time": {phase: {"kind": "estimated", "ms": ms} for phase, ms in times.items()},
        }],
    }))
    return path


def prover_command(behaviour, *args):
    words = [sys.executable, str(PROVER), "--behaviour", behaviour, "--gpu-name", GPU_NAME,
             "--memory-bytes", str(GPU_MEMORY), *args]
    return " ".join(shlex.quote(w) for w in words)


def check(ssh, *args, profiles_path=None, timeout=180):
    """Runs `gpu-attestor check --json`; returns (exit code, verdict object, completed process)."""
    command = [str(ATTESTOR), "check", "--ssh", ssh, "--remote-command", "", "--json", *args]
    if profiles_path is not None:
        command += ["--profiles", str(profiles_path)]
    out = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    lines = [line for line in out.stdout.splitlines() if line.strip()]
    assert lines, f"no verdict (exit {out.returncode}): {out.stderr}"
    return out.returncode, json.loads(lines[-1]), out


def other_executor_id():
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
    key = Ed25519PrivateKey.from_private_bytes(bytes([0x77]) * 32).public_key()
    return prover.executor_id_of(key.public_bytes(Encoding.Raw, PublicFormat.Raw))


def test_the_honest_python_prover_passes_on_estimated_limits(tmp_path):
    code, verdict, out = check(prover_command("honest"), profiles_path=profiles(tmp_path))
    assert (code, verdict["verdict"]) == (0, "PASS"), out.stdout + out.stderr
    assert not verdict["reasons"]
    assert "estimated" in json.dumps(verdict), verdict
    print("honest Python prover:", json.dumps(verdict))


def test_two_honest_gpus_pass(tmp_path):
    """G = 2: one challenge entry per GPU, per-GPU keys and 128 tiles per GPU."""
    code, verdict, out = check(prover_command("honest", "--gpus", "2"), profiles_path=profiles(tmp_path))
    assert (code, verdict["verdict"]) == (0, "PASS"), out.stdout + out.stderr


# behaviour, prover arguments, check arguments, the texts one reason must contain (any of the
# alternatives, each a tuple of substrings that must all be there).
CHEATS = [
    ("inflated-pongs", [], [], [("the network is too slow to time this executor",)]),
    ("unknown-gpu", [], [], [("no profile for `NVIDIA B200X`",)]),
    ("no-gpus", [], [], [("claims no GPU",)]),
    ("skip-tiles", ["--fraction", "0.05"], [], [("tile", "does not reach")]),
    ("skip-products", ["--fraction", "0.05"], [], [("tile", "does not reach"), ("R_A",)]),
    ("lazy-phase-b", [], [], [("over the limit", "walk")]),
    # Its openings are for other tiles and lanes than the validator's, and its report names
    # other samples: either is caught, whichever the validator checks first.
    ("self-chosen-samples", [], [], [("lane", "does not reach"), ("tile", "does not reach"),
                                     ("does not describe this conversation",)]),
    ("weak-key", [], [], [("weak",)]),
    ("relay", [], ["--expect-executor", other_executor_id()], [("not the expected executor",)]),
    ("hello-report-mismatch", [], [], [("differ from hello", "gpus")]),
    ("slow", ["--delay", str(SLOW_DELAY_S)], [], [("over the limit", "phase A")]),
]


@pytest.mark.parametrize("behaviour,prover_args,check_args,expected", CHEATS, ids=[c[0] for c in CHEATS])
def test_each_cheat_fails(tmp_path, behaviour, prover_args, check_args, expected):
    code, verdict, out = check(prover_command(behaviour, *prover_args), *check_args, profiles_path=profiles(tmp_path))
    assert (code, verdict["verdict"]) == (1, "FAIL"), out.stdout + out.stderr
    reasons = verdict["reasons"]
    assert any(all(text in reason for text in alternative) for reason in reasons for alternative in expected), reasons


def test_the_rust_cpu_prover_is_untimed(tmp_path):
    key = tmp_path / "identity.key"
    key.write_bytes(bytes([0x42]) * 32)
    key.chmod(0o600)
    ssh = " ".join(shlex.quote(w) for w in [str(ATTESTOR), "challenge", "--backend", "cpu", "--identity", str(key)])
    code, verdict, out = check(ssh, "--matrix-dim", "32", "--num-matrices", "4", "--dataset-items", "2048")
    assert (code, verdict["verdict"]) == (3, "UNTIMED"), out.stdout + out.stderr
    assert not verdict["reasons"]


def test_skipped_tiles_pass_at_the_rate_the_sample_size_predicts(tmp_path):
    """A prover that skips each tile with probability F passes only when none of the T = 256
    sampled tiles is skipped: probability (1 − F)^T. F is chosen so that this is 1/2, where the
    observed rate is most sensitive to a validator that samples fewer tiles than it says or
    draws them badly; the bound (4 σ of the binomial) is generous enough to never flake."""
    runs, tiles = 40, 256
    work = {"m": 16, "n": 16, "k": 16, "count": 4096, "items": 32}  # 4096 tiles, cheap lanes
    path = profiles(tmp_path, work, {"phase_a": 10_000, "build": 10_000, "walk": 10_000})
    fraction = 1 - 0.5 ** (1 / tiles)
    ssh = prover_command("skip-tiles", "--fraction", repr(fraction))

    def one(_):
        return check(ssh, profiles_path=path)

    # Two at a time: the machine has two cores and each run waits on pipes as much as it computes.
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(one, range(runs)))
    passed = 0
    for code, verdict, out in results:
        if code == 0:
            assert verdict["verdict"] == "PASS"
            passed += 1
        else:
            assert (code, verdict["verdict"]) == (1, "FAIL"), out.stdout + out.stderr
            assert any("tile" in r and "does not reach" in r for r in verdict["reasons"]), verdict["reasons"]
    p = (1 - fraction) ** tiles
    sigma = math.sqrt(runs * p * (1 - p))
    print(f"skip-tiles F = {fraction:.5f}: passed {passed} of {runs}, expected {runs * p:.1f} ± {sigma:.1f} "
          f"((1 − F)^{tiles} = {p:.3f})")
    assert abs(passed - runs * p) <= 4 * sigma


def check_with_report(tmp_path, behaviour):
    secret = tmp_path / "hotkey.secret"
    secret.write_text(HOTKEY_SEED)
    secret.chmod(0o600)
    report = tmp_path / f"{behaviour}.json"
    code, verdict, out = check(prover_command(behaviour), "--report", str(report), "--hotkey-secret-file", str(secret),
                               profiles_path=profiles(tmp_path))
    return code, verdict, out, report


def verify(path):
    out = subprocess.run([str(ATTESTOR), "verify", str(path)], capture_output=True, text=True, timeout=120)
    return out.returncode, out.stdout + out.stderr


def test_verify_accepts_a_co_signed_report_and_refuses_unauthenticated_samples(tmp_path):
    code, verdict, out, report = check_with_report(tmp_path, "honest")
    assert (code, verdict["verdict"]) == (0, "PASS"), out.stdout + out.stderr
    body = json.loads(report.read_text())
    assert body["schema_version"] == 2 and body["sample_mode"] == "interactive" and body["validator_signature"]
    code, text = verify(report)
    assert code == 0, text

    # Without the validator's signature the samples could be the executor's own choice.
    body["validator_signature"] = ""
    stripped = tmp_path / "stripped.json"
    stripped.write_text(json.dumps(body))
    code, text = verify(stripped)
    assert code == 1 and "samples not authenticated" in text, text


def test_verify_refuses_the_self_chosen_samples_report(tmp_path):
    code, verdict, out, report = check_with_report(tmp_path, "self-chosen-samples")
    assert (code, verdict["verdict"]) == (1, "FAIL"), out.stdout + out.stderr
    assert report.exists(), "check writes the prover's report even when the verdict is FAIL"
    code, text = verify(report)
    assert code == 1, text
