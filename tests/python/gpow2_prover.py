"""A GPoW-2 prover written apart from the Rust one: it speaks protocol 2 (docs/gpow2-protocol.md)
as the prover on stdin/stdout, computes GPOW.md's phase A and phase B with numpy (vectorised
Philox4x32-10, batched int8 products, Merkle trees) and signs a schema 2 report with ed25519.

It exists to attack the validator (`gpu-attestor check`): besides `honest`, every behaviour in
BEHAVIOURS is one cheat a validator must catch. Usage:

    python gpow2_prover.py --behaviour NAME [--fraction F] [--delay S] [--identity-seed HEX64]
                           [--gpu-name NAME] [--gpus N] [--memory-bytes B]

The slow, plain implementation in gpow2_reference.py is the bit-for-bit yardstick; the tests hold
the numpy paths here to it (test_gpow2_adversary.py)."""

import argparse
import hashlib
import json
import os
import select
import socket
import struct
import sys
import time

import numpy as np

import gpow2_reference as ref

PROTOCOL = 2
VERSION = "gpow2-prover.py/1"
MASK = 0xFFFFFFFF
M0, M1 = np.uint64(0xD2511F53), np.uint64(0xCD9E8D57)
W0, W1 = np.uint64(0x9E3779B9), np.uint64(0xBB67AE85)
FNV = np.uint32(0x01000193)
CACHE_ITEMS = 1 << 22
# The identity point of edwards25519 and a signature (R = identity, s = 0) that a non-strict
# verifier accepts for every message under it.
WEAK_PUBLIC_KEY = bytes([1]) + bytes(31)
WEAK_SIGNATURE = bytes([1]) + bytes(63)
DEFAULT_SEED = hashlib.sha256(b"gpow2_prover.py default identity").hexdigest()

# Every behaviour, with what it changes. The flags are read where the cheat happens; `honest`
# sets none of them.
BEHAVIOURS = {
    "honest": {},
    "inflated-pongs": {"pong_delay_s": 2.0},
    "unknown-gpu": {"gpus": 8, "gpu_name": "NVIDIA B200X"},
    "no-gpus": {"gpus": 0},
    "skip-tiles": {"skip_tiles": True},
    "skip-products": {"skip_products": True},
    "lazy-phase-b": {"lazy": True},
    "self-chosen-samples": {"self_chosen": True},
    "weak-key": {"weak_key": True},
    "relay": {},  # honest; the validator expects another executor
    "hello-report-mismatch": {"report_gpus_differ": True},
    "slow": {"slow": True},
}


# ---------------------------------------------------------------- the math, vectorised


def philox(c0, c1, c2, c3, k0, k1):
    """Philox4x32-10 on arrays (broadcast together): four uint32 arrays."""
    c0, c1, c2, c3, k0, k1 = (np.asarray(x, dtype=np.uint64) & np.uint64(MASK) for x in (c0, c1, c2, c3, k0, k1))
    c0, c1, c2, c3 = np.broadcast_arrays(c0, c1, c2, c3)
    mask, shift = np.uint64(MASK), np.uint64(32)
    for rnd in range(10):
        if rnd:
            k0, k1 = (k0 + W0) & mask, (k1 + W1) & mask
        p0, p1 = c0 * M0, c2 * M1
        c0, c1, c2, c3 = (p1 >> shift) ^ c1 ^ k0, p1 & mask, (p0 >> shift) ^ c3 ^ k1, p0 & mask
    return [c.astype(np.uint32) for c in (c0, c1, c2, c3)]


def philox_words(c0, c1, c2, c3, k0, k1):
    """Philox as one array with the four words on a new last axis."""
    return np.stack(philox(c0, c1, c2, c3, k0, k1), axis=-1)


def fnv(a, b):
    return (np.asarray(a, dtype=np.uint32) * FNV) ^ np.asarray(b, dtype=np.uint32)


def pick(x, n):
    return ((np.asarray(x, dtype=np.uint64) * np.uint64(n)) >> np.uint64(32)).astype(np.int64)


def sha_rows(rows):
    """SHA-256 of each row of a 2-D uint8 array: an (N, 32) uint8 array."""
    rows = np.ascontiguousarray(rows, dtype=np.uint8)
    data, width = rows.tobytes(), rows.shape[1]
    sha = hashlib.sha256
    out = b"".join(sha(data[i:i + width]).digest() for i in range(0, len(data), width))
    return np.frombuffer(out, dtype=np.uint8).reshape(-1, 32)


def u32_columns(*columns):
    """Columns of u32 values as little-endian bytes side by side: (N, 4·len(columns)) uint8."""
    words = np.stack([np.asarray(c, dtype=np.uint32) for c in np.broadcast_arrays(*columns)], axis=-1)
    return words.astype("<u4").view(np.uint8).reshape(words.shape[0], -1)


def merkle_levels(leaves):
    """Every level of the Merkle trees over leaves shaped (trees, L, 32), the leaves first; all
    trees have the same shape, so one level of all of them is hashed in one pass."""
    levels = [leaves]
    while leaves.shape[1] > 1:
        trees, count = leaves.shape[0], leaves.shape[1]
        pairs = leaves[:, : count // 2 * 2].reshape(trees * (count // 2), 64)
        tag = np.ones((pairs.shape[0], 1), dtype=np.uint8)
        up = sha_rows(np.concatenate([tag, pairs], axis=1)).reshape(trees, count // 2, 32)
        if count % 2:
            up = np.concatenate([up, leaves[:, -1:]], axis=1)  # the odd node is carried up
        leaves = up
        levels.append(leaves)
    return levels


def merkle_path(levels, tree, index):
    """Siblings of leaf `index` of tree `tree`, from the leaf up, none at a carried level."""
    path = []
    for level in levels[:-1]:
        sibling = index ^ 1
        if sibling < level.shape[1]:
            path.append(level[tree, sibling].tobytes().hex())
        index //= 2
    return path


def root_of(levels, tree=0):
    return levels[-1][tree, 0].tobytes()


def int8_matrices(rows, cols, products, key):
    """Philox matrices rows×cols for products `products`: row i, 16-byte block q of matrix p is
    Philox(i, q, p, 0; key) read as int8. Shape (P, rows, cols)."""
    i = np.arange(rows, dtype=np.uint64)[None, :, None]
    q = np.arange(cols // 16, dtype=np.uint64)[None, None, :]
    p = np.asarray(products, dtype=np.uint64)[:, None, None]
    words = philox_words(i, q, p, 0, key[0], key[1])  # (P, rows, cols/16, 4)
    return words.astype("<u4").view(np.int8).reshape(len(products), rows, cols)


def products_c(keys, work, products):
    """C_p for the given products, int32 (P, m, n). The products run in float64: every partial
    sum is below 2^29 in magnitude, so the result is exact, and BLAS is far faster than int32."""
    m, n, k = work["m"], work["n"], work["k"]
    a = int8_matrices(m, k, products, keys["A"]).astype(np.float64)
    b = int8_matrices(k, n, products, keys["B"]).astype(np.float64)
    return np.rint(np.matmul(a, b)).astype(np.int32)


def tile_leaves(g, products, c):
    """tile_leaf(g, p, ti, tj) for every tile of C (P, m, n): (P, (m/16)·(n/16), 32)."""
    count, m, n = c.shape
    ti_count, tj_count = m // 16, n // 16
    tiles = c.reshape(count, ti_count, 16, tj_count, 16).transpose(0, 1, 3, 2, 4)
    tiles = np.ascontiguousarray(tiles).astype("<i4").view(np.uint8).reshape(-1, 1024)
    p = np.repeat(np.asarray(products, dtype=np.uint32), ti_count * tj_count)
    ti = np.tile(np.repeat(np.arange(ti_count, dtype=np.uint32), tj_count), count)
    tj = np.tile(np.arange(tj_count, dtype=np.uint32), count * ti_count)
    head = u32_columns(np.full_like(p, g), p, ti, tj)
    tag = np.full((len(p), 1), 3, dtype=np.uint8)
    return sha_rows(np.concatenate([tag, head, tiles], axis=1)).reshape(count, ti_count * tj_count, 32)


def product_leaves_of_roots(g, roots):
    """SHA-256(0x02 ‖ u32 g ‖ u32 p ‖ R_p) for roots (count, 32): the leaves of R_A,g's tree."""
    count = roots.shape[0]
    head = u32_columns(np.full(count, g), np.arange(count))
    tag = np.full((count, 1), 2, dtype=np.uint8)
    return sha_rows(np.concatenate([tag, head, roots], axis=1))


def phase_a(keys, work, skip_tiles=0.0, skip_products=0.0, rng=None, chunk_bytes=1 << 24):
    """Phase A of one GPU: {"product_levels": [levels per chunk], "roots": (count, 32), "levels_a"}.
    skip_tiles / skip_products are cheats: that fraction of tiles (products) gets a random leaf
    instead of its own, each tile (product) independently, so a sample of T distinct tiles misses
    every skipped one with probability exactly (1 − F)^T."""
    m, n, k, count = work["m"], work["n"], work["k"], work["count"]
    # Products in chunks small enough that the float64 operands stay near chunk_bytes.
    per_chunk = max(1, chunk_bytes // (8 * (m * k + k * n + m * n)))
    product_levels, roots = [], []
    for first in range(0, count, per_chunk):
        products = np.arange(first, min(count, first + per_chunk))
        skipped = rng.random(len(products)) < skip_products if skip_products else np.zeros(len(products), bool)
        leaves = np.empty((len(products), (m // 16) * (n // 16), 32), dtype=np.uint8)
        done = products[~skipped]
        if len(done):
            leaves[~skipped] = tile_leaves(keys["g"], done, products_c(keys, work, done))
        # A skipped product is not computed at all: its leaves are random bytes.
        leaves[skipped] = rng.integers(0, 256, size=leaves[skipped].shape, dtype=np.uint8) if skipped.any() else 0
        if skip_tiles:
            fake = rng.random(leaves.shape[:2]) < skip_tiles
            leaves[fake] = rng.integers(0, 256, size=(int(fake.sum()), 32), dtype=np.uint8)
        levels = merkle_levels(leaves)
        product_levels.append((first, levels))
        roots.append(levels[-1][:, 0])
    roots = np.concatenate(roots)
    levels_a = merkle_levels(product_leaves_of_roots(keys["g"], roots)[None])
    return {"product_levels": product_levels, "roots": roots, "levels_a": levels_a, "per_chunk": per_chunk}


def tile_path(a, work, p, ti, tj):
    first, levels = a["product_levels"][p // a["per_chunk"]]
    return merkle_path(levels, p - first, ti * (work["n"] // 16) + tj)


class Cache:
    """GPOW.md's cache, counter-based: items are computed when first needed and kept."""

    def __init__(self, master_g):
        self.prefix = hashlib.sha256(b"\x10" + master_g)
        self.items = {}

    def item(self, x):
        got = self.items.get(x)
        if got is None:
            h0, h1 = self.prefix.copy(), self.prefix.copy()
            h0.update(struct.pack("<IB", x, 0))
            h1.update(struct.pack("<IB", x, 1))
            got = self.items[x] = h0.digest() + h1.digest()
        return got

    def gather(self, indices):
        """Cache items for an int array of indices: (N, 16) uint32."""
        unique, inverse = np.unique(indices, return_inverse=True)
        rows = np.frombuffer(b"".join(self.item(int(x)) for x in unique), dtype="<u4").reshape(-1, 16)
        return rows[inverse.reshape(-1)]


def dataset_items(keys, js, cache):
    """Dataset items `js` (uint32 array): (N, 16) uint32."""
    js = np.asarray(js, dtype=np.uint32)
    k0, k1 = keys["D"]
    mix = np.concatenate([philox_words(js, q, 0, 0xD0, k0, k1) for q in range(4)], axis=1)
    for t in range(16):
        x = fnv(js ^ np.uint32(t), mix[:, t])
        mix = fnv(mix, cache.gather(pick(x, CACHE_ITEMS)))
    out = [
        philox_words(mix[:, 4 * q], mix[:, 4 * q + 1], mix[:, 4 * q + 2], mix[:, 4 * q + 3],
                     mix[:, (4 * q + 4) % 16] ^ np.uint32(k0), mix[:, (4 * q + 5) % 16] ^ np.uint32(k1))
        for q in range(4)
    ]
    return np.concatenate(out, axis=1)


def dataset(keys, items, cache, chunk=1 << 16):
    """The whole dataset: (items, 16) uint32."""
    return np.concatenate([dataset_items(keys, np.arange(j, min(items, j + chunk)), cache)
                           for j in range(0, items, chunk)])


def walk(wkey, items, page_rows):
    """cmix (L, 8) of every lane. page_rows(pg int array) gives the pages' 32 words each."""
    lanes = np.arange(items // 16, dtype=np.uint32)
    pages = items // 2
    mix = np.concatenate([philox_words(lanes, s, 1, 0x57, wkey[0], wkey[1]) for s in range(8)], axis=1)
    for a in range(128):
        x = fnv(lanes ^ np.uint32(a), mix[:, a % 32])
        mix = fnv(mix, page_rows(pick(x, pages)))
    return fnv(fnv(fnv(mix[:, 0::4], mix[:, 1::4]), mix[:, 2::4]), mix[:, 3::4])


def lane_leaves(g, cmix):
    count = cmix.shape[0]
    head = u32_columns(np.full(count, g), np.arange(count))
    words = np.ascontiguousarray(cmix).astype("<u4").view(np.uint8).reshape(count, 32)
    tag = np.full((count, 1), 0x13, dtype=np.uint8)
    return sha_rows(np.concatenate([tag, head, words], axis=1))


def phase_b_walk(keys, work, walk_nonce, data=None, cache=None):
    """The walk of one GPU: the Merkle levels over its lane leaves. With `data` (the dataset)
    pages are read from it; without, each page is recomputed from the cache every time the walk
    touches it (the lazy prover, which stores nothing)."""
    items = work["items"]
    wkey = ref.walk_key(keys, walk_nonce)
    if data is not None:
        pages = data.reshape(items // 2, 32)
        page_rows = lambda pg: pages[pg]
    else:
        def page_rows(pg):
            both = dataset_items(keys, np.stack([2 * pg, 2 * pg + 1], axis=1).reshape(-1), cache)
            return both.reshape(-1, 32)
    return merkle_levels(lane_leaves(keys["g"], walk(wkey, items, page_rows))[None])


# ---------------------------------------------------------------- the report


def canonical_report(r):
    """docs/gpow2-protocol.md's canonical bytes of a schema 2 report (without its signatures)."""
    out = bytearray()

    def b(data):
        data = data.encode() if isinstance(data, str) else data
        out.extend(b"b" + struct.pack("<Q", len(data)) + data)

    def u(x):
        out.extend(b"u" + struct.pack("<Q", int(x)))

    def lst(n):
        out.extend(b"l" + struct.pack("<Q", n))

    h = bytes.fromhex
    b("gpow/v2/report")
    u(r["schema_version"])
    b(r["executor_id"])
    b(h(r["executor_public_key"]))
    b(r["validator_hotkey"])
    b(r["sample_mode"])
    b(ref.canonical(challenge_bytes(r["challenge"])))
    b(h(r["walk_nonce"]))
    lst(len(r["commitments"]))
    for c in r["commitments"]:
        b(h(c["root_a"]))
        lst(len(c["product_roots"]))
        for x in c["product_roots"]:
            b(h(x))
        lst(0 if c["root_b"] is None else 1)
        if c["root_b"] is not None:
            b(h(c["root_b"]))
    lst(len(r["samples"]))
    for s in r["samples"]:
        lst(len(s["tiles"]))
        for t in s["tiles"]:
            u(t["p"]), u(t["ti"]), u(t["tj"])
        lst(len(s["lanes"]))
        for lane in s["lanes"]:
            u(lane)
    lst(len(r["openings"]))
    for o in r["openings"]:
        for paths in (o["tile_paths"], o["lane_paths"]):
            lst(len(paths))
            for path in paths:
                lst(len(path))
                for x in path:
                    b(h(x))
    lst(len(r["gpus"]))
    for g in r["gpus"]:
        u(g["index"]), b(g["uuid"]), b(g["name"]), b(g["pci_bus_id"]), u(g["memory_bytes"])
        b(g["compute_capability"]), u(g["cuda_cores"]), u(g["max_sm_clock_mhz"])
        u(g["max_memory_clock_mhz"]), u(g["power_limit_mw"]), b(g["driver_version"])
        b(g["cuda_version"]), b(g["mig_mode"])
    host = r["host"]
    b(host["hostname"]), b(host["os"]), b(host["kernel"]), b(host["cpu_model"])
    u(host["cpu_cores"]), u(host["memory_bytes"])
    e = r["evidence"]
    lst(len(e["proc_driver_gpus"]))
    for x in e["proc_driver_gpus"]:
        b(x)
    u(e["proc_driver_is_procfs"]), b(e["nvml_library_path"]), b(e["nvml_library_sha256"])
    b(e["ld_preload"]), b(e["ld_so_preload"]), u(e["cpu_hypervisor"])
    b(e["dmi_sys_vendor"]), b(e["dmi_product_name"])
    lst(len(e["gpus"]))
    for x in e["gpus"]:
        u(x["index"]), b(x["serial"]), b(x["board_part_number"]), b(x["vbios_version"])
        u(x["default_power_limit_mw"]), u(x["enforced_power_limit_mw"])
    lst(len(e["gpu_processes"]))
    for x in e["gpu_processes"]:
        u(x["gpu_index"]), u(x["pid"]), u(x["used_memory_bytes"]), b(x["container_id"])
    t = r["prover_timings"]
    u(t["phase_a_ms"]), u(t["build_ms"]), u(t["walk_ms"]), u(t["open_ms"])
    times = r["validator_times"]
    lst(0 if times is None else 1)
    if times is not None:
        u(times["rtt_us"]), u(times["phase_a_us"]), u(times["build_us"]), u(times["walk_us"])
    b(r["binary_version"]), b(r["backend"]["kind"]), b(r["backend"]["kernel"]), u(r["backend"]["threads"])
    return bytes(out)


def challenge_bytes(c):
    """The wire Challenge (hex strings) in gpow2_reference's form (bytes)."""
    out = {f: bytes.fromhex(c[f]) for f in ("seed", "nonce", "executor_key", "validator_key")}
    out["gpus"] = [dict(w) for w in c["gpus"]]
    return out


def executor_id_of(public_key):
    return "executor-" + hashlib.sha256(b"basilica/executor-id/v1" + public_key).digest()[:16].hex()


# ---------------------------------------------------------------- the conversation


class ProtocolError(Exception):
    """Ends the conversation; `reply` says whether the validator still listens for our error."""

    def __init__(self, message, reply=True):
        super().__init__(message)
        self.reply = reply


class Wire:
    """Line-delimited JSON on stdin/stdout with a deadline on every wait."""

    def __init__(self, timeout, pong_delay_s):
        self.timeout, self.pong_delay_s = timeout, pong_delay_s
        self.buffer = b""

    def send(self, obj):
        sys.stdout.write(json.dumps(obj, separators=(",", ":")) + "\n")
        sys.stdout.flush()

    def line(self):
        deadline = time.monotonic() + self.timeout
        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([0], [], [], left)[0]:
                raise ProtocolError("timed out waiting for the validator")
            chunk = os.read(0, 1 << 16)
            if not chunk:
                raise ProtocolError("the validator closed the connection", reply=False)
            self.buffer += chunk
            if len(self.buffer) > 16 << 20:
                raise ProtocolError("a line over 16 MiB")
        line, self.buffer = self.buffer.split(b"\n", 1)
        return json.loads(line)

    def expect(self, kind):
        """The next message of type `kind`, answering pings on the way."""
        while True:
            msg = self.line()
            if msg.get("type") == "ping" and set(msg) == {"type", "id"}:
                if self.pong_delay_s:
                    time.sleep(self.pong_delay_s)
                self.send({"type": "pong", "id": msg["id"]})
            elif msg.get("type") == "error":
                raise ProtocolError(f"the validator ended the conversation: {msg.get('message')}", reply=False)
            elif msg.get("type") == kind:
                return msg
            else:
                raise ProtocolError(f"expected `{kind}`, got `{msg.get('type')}`")


def gpu_facts(index, name, memory_bytes):
    return {
        "index": index, "uuid": f"GPU-00000000-0000-4000-8000-{index:012x}", "name": name,
        "pci_bus_id": f"00000000:{0x18 + index:02X}:00.0", "memory_bytes": memory_bytes,
        "compute_capability": "9.0", "cuda_cores": 16896, "max_sm_clock_mhz": 1980,
        "max_memory_clock_mhz": 2619, "power_limit_mw": 700000, "driver_version": "550.54.15",
        "cuda_version": "12.4", "mig_mode": "disabled",
    }


def host_facts():
    return {"hostname": socket.gethostname(), "os": "linux", "kernel": os.uname().release,
            "cpu_model": "python", "cpu_cores": os.cpu_count() or 1, "memory_bytes": 1 << 34}


EVIDENCE = {
    "proc_driver_gpus": [], "proc_driver_is_procfs": False, "nvml_library_path": "",
    "nvml_library_sha256": "", "ld_preload": "", "ld_so_preload": "", "cpu_hypervisor": False,
    "dmi_sys_vendor": "", "dmi_product_name": "", "gpus": [], "gpu_processes": [],
}


def check_challenge(c, public_key, gpus):
    if set(c) != {"seed", "nonce", "executor_key", "validator_key", "gpus"}:
        raise ProtocolError("challenge: unexpected fields")
    if c["executor_key"] != public_key.hex():
        raise ProtocolError("challenge: executor_key is not this executor's key")
    if len(c["gpus"]) != max(gpus, 1) or not 1 <= len(c["gpus"]) <= 64:
        raise ProtocolError(f"challenge: {len(c['gpus'])} GPUs, this executor claims {gpus}")
    for g, w in enumerate(c["gpus"]):
        if set(w) != {"m", "n", "k", "count", "items"}:
            raise ProtocolError(f"challenge: gpus[{g}]: unexpected fields")
        for f in ("m", "n", "k"):
            if not (16 <= w[f] <= 32768 and w[f] % 16 == 0):
                raise ProtocolError(f"challenge: gpus[{g}].{f} = {w[f]}")
        if not 1 <= w["count"] <= 1_000_000:
            raise ProtocolError(f"challenge: gpus[{g}].count = {w['count']}")
        if w["items"] and not (32 <= w["items"] <= (1 << 32) - 32 and w["items"] % 32 == 0):
            raise ProtocolError(f"challenge: gpus[{g}].items = {w['items']}")


def check_sample(open_gpus, works):
    """The prover refuses samples larger than the protocol's, repeated or out of range."""
    if len(open_gpus) != len(works):
        raise ProtocolError("open: one entry per GPU")
    per_gpu_tiles = 256 if len(works) == 1 else 128
    for g, (s, w) in enumerate(zip(open_gpus, works)):
        if set(s) != {"tiles", "lanes"}:
            raise ProtocolError(f"open: gpus[{g}]: unexpected fields")
        total = w["count"] * (w["m"] // 16) * (w["n"] // 16)
        tiles = [(t["p"], t["ti"], t["tj"]) for t in s["tiles"]]
        if len(tiles) > min(per_gpu_tiles, total) or len(set(tiles)) != len(tiles):
            raise ProtocolError(f"open: gpus[{g}]: {len(tiles)} tiles, too many or repeated")
        if any(not (p < w["count"] and ti < w["m"] // 16 and tj < w["n"] // 16) for p, ti, tj in tiles):
            raise ProtocolError(f"open: gpus[{g}]: a tile outside the work")
        lanes = s["lanes"]
        if len(lanes) > min(128, w["items"] // 16) or len(set(lanes)) != len(lanes):
            raise ProtocolError(f"open: gpus[{g}]: {len(lanes)} lanes, too many or repeated")
        if any(not 0 <= lane < w["items"] // 16 for lane in lanes):
            raise ProtocolError(f"open: gpus[{g}]: a lane outside the work")


def own_sample(work, gpus):
    """The self-chosen-samples cheat: always the first tiles and lanes, as many as asked."""
    tiles_per_product = (work["m"] // 16) * (work["n"] // 16)
    total = work["count"] * tiles_per_product
    tiles = []
    for t in range(min(256 if gpus == 1 else 128, total)):
        p, rest = divmod(t, tiles_per_product)
        tiles.append({"p": p, "ti": rest // (work["n"] // 16), "tj": rest % (work["n"] // 16)})
    return {"tiles": tiles, "lanes": list(range(min(128, work["items"] // 16)))}


def ms_since(start):
    return int((time.monotonic() - start) * 1000)


def prove(args, wire):
    flags = dict(BEHAVIOURS[args.behaviour])
    gpus = flags.get("gpus", args.gpus)
    name = flags.get("gpu_name", args.gpu_name)
    rng = np.random.default_rng()  # OS-seeded: each run skips other tiles

    if flags.get("weak_key"):
        public_key, sign = WEAK_PUBLIC_KEY, (lambda _msg: WEAK_SIGNATURE)
    else:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
        from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
        secret = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(args.identity_seed))
        public_key = secret.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        sign = secret.sign
    executor_id = executor_id_of(public_key)
    backend = {"kind": "cuda", "kernel": "python-numpy", "threads": 1}
    gpu_list = [gpu_facts(i, name, args.memory_bytes) for i in range(gpus)]
    host = host_facts()

    wire.send({"type": "hello", "protocol": PROTOCOL, "version": VERSION, "executor_id": executor_id,
               "executor_public_key": public_key.hex(), "backend": backend, "gpus": gpu_list,
               "host": host, "evidence": EVIDENCE})

    msg = wire.expect("challenge")
    start = time.monotonic()
    if set(msg) != {"type", "challenge", "validator_hotkey"}:
        raise ProtocolError("challenge: unexpected fields")
    challenge, validator_hotkey = msg["challenge"], msg["validator_hotkey"]
    check_challenge(challenge, public_key, gpus)
    works = challenge["gpus"]
    master = ref.master(challenge_bytes(challenge))
    keys = [ref.gpu_keys(master, g) for g in range(len(works))]

    # Phase A, every GPU in turn (a real prover runs them at once).
    skip_tiles = args.fraction if flags.get("skip_tiles") else 0.0
    skip_products = args.fraction if flags.get("skip_products") else 0.0
    phase_as = [phase_a(keys[g], w, skip_tiles, skip_products, rng) for g, w in enumerate(works)]
    if flags.get("slow"):
        time.sleep(args.delay)
    wire.send({"type": "commit_a", "elapsed_ms": ms_since(start), "gpus": [
        {"root_a": root_of(a["levels_a"]).hex(), "product_roots": [r.tobytes().hex() for r in a["roots"]]}
        for a in phase_as]})
    phase_a_ms = ms_since(start)

    # Phase B: the cache and the dataset of every GPU with items > 0. The lazy prover stores
    # nothing and says it is done at once.
    start = time.monotonic()
    caches = [Cache(k["master_g"]) for k in keys]
    datasets = [None] * len(works)
    if not flags.get("lazy"):
        datasets = [dataset(keys[g], w["items"], caches[g]) if w["items"] else None for g, w in enumerate(works)]
    wire.send({"type": "built", "elapsed_ms": ms_since(start)})
    build_ms = ms_since(start)

    msg = wire.expect("walk")
    start = time.monotonic()
    if set(msg) != {"type", "walk_nonce"}:
        raise ProtocolError("walk: unexpected fields")
    walk_nonce = bytes.fromhex(msg["walk_nonce"])
    walks = [phase_b_walk(keys[g], w, walk_nonce, datasets[g], caches[g]) if w["items"] else None
             for g, w in enumerate(works)]
    roots_b = [root_of(levels).hex() if levels else None for levels in walks]
    wire.send({"type": "commit_b", "roots_b": roots_b, "elapsed_ms": ms_since(start)})
    walk_ms = ms_since(start)

    msg = wire.expect("open")
    start = time.monotonic()
    if set(msg) != {"type", "gpus", "times"}:
        raise ProtocolError("open: unexpected fields")
    check_sample(msg["gpus"], works)
    samples = msg["gpus"]
    if flags.get("self_chosen"):
        samples = [own_sample(w, len(works)) for w in works]
    openings = []
    for g, (s, w) in enumerate(zip(samples, works)):
        openings.append({
            "tile_paths": [tile_path(phase_as[g], w, t["p"], t["ti"], t["tj"]) for t in s["tiles"]],
            "lane_paths": [merkle_path(walks[g], 0, lane) for lane in s["lanes"]],
        })
    wire.send({"type": "openings", "gpus": openings})
    open_ms = ms_since(start)

    report_gpus = [dict(gpu) for gpu in gpu_list]
    if flags.get("report_gpus_differ"):
        for gpu in report_gpus:
            gpu["memory_bytes"] += 1 << 30
    report = {
        "schema_version": 2, "executor_id": executor_id, "executor_public_key": public_key.hex(),
        "validator_hotkey": validator_hotkey, "sample_mode": "interactive",
        "challenge": challenge, "walk_nonce": walk_nonce.hex(),
        "commitments": [{"root_a": root_of(a["levels_a"]).hex(),
                         "product_roots": [r.tobytes().hex() for r in a["roots"]], "root_b": rb}
                        for a, rb in zip(phase_as, roots_b)],
        "samples": samples, "openings": openings, "gpus": report_gpus, "host": host, "evidence": EVIDENCE,
        "prover_timings": {"phase_a_ms": phase_a_ms, "build_ms": build_ms, "walk_ms": walk_ms, "open_ms": open_ms},
        "validator_times": msg["times"], "binary_version": VERSION, "backend": backend,
    }
    report["signature"] = sign(canonical_report(report)).hex()
    report["validator_signature"] = ""
    wire.send({"type": "report", "report": report})


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--behaviour", choices=sorted(BEHAVIOURS), default="honest")
    parser.add_argument("--fraction", type=float, default=0.05, help="skip-tiles / skip-products: the fraction skipped")
    parser.add_argument("--delay", type=float, default=5.0, help="slow: seconds slept before commit_a")
    parser.add_argument("--identity-seed", default=DEFAULT_SEED, help="the ed25519 seed, 64 hex digits")
    parser.add_argument("--gpu-name", default="Test GPU")
    parser.add_argument("--gpus", type=int, default=1)
    parser.add_argument("--memory-bytes", type=int, default=80 << 30)
    parser.add_argument("--timeout", type=float, default=60.0, help="longest wait for each validator message")
    args = parser.parse_args(argv)
    wire = Wire(args.timeout, BEHAVIOURS[args.behaviour].get("pong_delay_s", 0.0))
    try:
        prove(args, wire)
    except ProtocolError as e:
        if e.reply:
            try:
                wire.send({"type": "error", "message": str(e)})
            except OSError:
                pass
        print(f"gpow2_prover: {e}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        print("gpow2_prover: the validator stopped reading", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
