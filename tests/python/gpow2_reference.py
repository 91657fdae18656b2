"""An independent, deliberately plain implementation of GPoW-2 (shared/GPOW.md) in Python,
written from the specification, to cross-check the Rust reference bit for bit: challenge,
master and per-GPU keys, phase A (int8 tiles, tile leaves, R_p, R_A,g), phase B (cache,
dataset, walk, lane leaves, R_B,g) and plain mode. Small sizes only: it is slow on purpose."""

import hashlib
import struct

M0, M1 = 0xD2511F53, 0xCD9E8D57
W0, W1 = 0x9E3779B9, 0xBB67AE85
MASK = 0xFFFFFFFF
CACHE_ITEMS = 1 << 22


def sha256(*parts):
    return hashlib.sha256(b"".join(parts)).digest()


def u32(x):
    return struct.pack("<I", x)


def philox4x32_10(ctr, key):
    c0, c1, c2, c3 = ctr
    k0, k1 = key
    for rnd in range(10):
        if rnd:
            k0, k1 = (k0 + W0) & MASK, (k1 + W1) & MASK
        p0, p1 = M0 * c0, M1 * c2
        c0, c1, c2, c3 = ((p1 >> 32) ^ c1 ^ k0) & MASK, p1 & MASK, ((p0 >> 32) ^ c3 ^ k1) & MASK, p0 & MASK
    return c0, c1, c2, c3


def philox_bytes(ctr, key):
    return struct.pack("<IIII", *philox4x32_10(ctr, key))


def fnv(a, b):
    return ((a * 0x01000193) & MASK) ^ b


def pick(x, n):
    return (x * n) >> 32


def merkle_root(leaves):
    level = list(leaves)
    while len(level) > 1:
        nxt = []
        for j in range(0, len(level), 2):
            if j + 1 < len(level):
                nxt.append(sha256(b"\x01", level[j], level[j + 1]))
            else:
                nxt.append(level[j])
        level = nxt
    return level[0]


# ---- challenge, master, per-GPU keys ----

def plain_challenge(seed, dim, count, items=0):
    return {
        "seed": struct.pack("<Q", seed) + bytes(24),
        "nonce": bytes(32),
        "executor_key": bytes(32),
        "validator_key": bytes(32),
        "gpus": [{"m": dim, "n": dim, "k": dim, "count": count, "items": items}],
    }


# Three GPUs with different shapes (m, n, k all different), one without phase B, non-zero nonce
# and keys: a challenge that exercises the canonical encoding and every per-GPU key.
MULTI_GPU_CHALLENGE = {
    "seed": bytes(range(32)),
    "nonce": bytes(range(32, 64)),
    "executor_key": bytes([0xEE]) * 32,
    "validator_key": bytes([0x5A]) * 32,
    "gpus": [
        {"m": 32, "n": 48, "k": 64, "count": 2, "items": 64},
        {"m": 16, "n": 16, "k": 16, "count": 1, "items": 0},
        {"m": 48, "n": 16, "k": 32, "count": 3, "items": 160},
    ],
}


def canonical(ch):
    out = ch["seed"] + ch["nonce"] + ch["executor_key"] + ch["validator_key"] + u32(len(ch["gpus"]))
    for w in ch["gpus"]:
        out += struct.pack("<IIIIQ", w["m"], w["n"], w["k"], w["count"], w["items"])
    return out


def master(ch):
    return sha256(b"gpow/v2", canonical(ch))


def first_8_as_key(h):
    return struct.unpack("<II", h[:8])


def gpu_keys(master_key, g):
    mg = sha256(b"gpow/v2/gpu", master_key, u32(g))
    return {
        "g": g,
        "master_g": mg,
        "A": first_8_as_key(sha256(mg, b"A")),
        "B": first_8_as_key(sha256(mg, b"B")),
        "D": first_8_as_key(sha256(mg, b"D")),
    }


def walk_key(keys, walk_nonce):
    return first_8_as_key(sha256(keys["master_g"], walk_nonce, b"W"))


# ---- phase A ----

def as_i8(data):
    return [b - 256 if b > 127 else b for b in data]


def matrix_rows(rows, cols, p, key, first_row=0):
    """Rows first_row..first_row+rows of a Philox matrix: row i, block q = Philox(i, q, p, 0)."""
    out = []
    for i in range(first_row, first_row + rows):
        out.append(as_i8(b"".join(philox_bytes((i, q, p, 0), key) for q in range(cols // 16))))
    return out


def product(keys, work, p):
    """C_p as a list of rows."""
    m, n, k = work["m"], work["n"], work["k"]
    a = matrix_rows(m, k, p, keys["A"])
    b = matrix_rows(k, n, p, keys["B"])
    bt = list(zip(*b))
    return [[sum(x * y for x, y in zip(a[i], bt[j])) for j in range(n)] for i in range(m)]


def tile_of(c, ti, tj):
    return [c[16 * ti + r][16 * tj + col] for r in range(16) for col in range(16)]


def tile_leaf(g, p, ti, tj, tile):
    return sha256(b"\x03", struct.pack("<IIII", g, p, ti, tj), struct.pack("<256i", *tile))


def product_root(keys, work, p):
    c = product(keys, work, p)
    leaves = []
    for ti in range(work["m"] // 16):
        for tj in range(work["n"] // 16):
            leaves.append(tile_leaf(keys["g"], p, ti, tj, tile_of(c, ti, tj)))
    return merkle_root(leaves)


def phase_a(keys, work):
    roots = [product_root(keys, work, p) for p in range(work["count"])]
    root = merkle_root([sha256(b"\x02", u32(keys["g"]), u32(p), r) for p, r in enumerate(roots)])
    return roots, root


# ---- phase B ----

def cache_item(master_g, x):
    h = sha256(b"\x10", master_g, u32(x), b"\x00") + sha256(b"\x10", master_g, u32(x), b"\x01")
    return list(struct.unpack("<16I", h))


def dataset_item(keys, j, cache=None):
    k0, k1 = keys["D"]
    mix = []
    for q in range(4):
        mix += philox4x32_10((j, q, 0, 0xD0), (k0, k1))
    for t in range(16):
        x = fnv(j ^ t, mix[t])
        idx = pick(x, CACHE_ITEMS)
        c = cache[idx] if cache is not None and idx in cache else cache_item(keys["master_g"], idx)
        if cache is not None:
            cache[idx] = c
        mix = [fnv(mix[w], c[w]) for w in range(16)]
    item = []
    for q in range(4):
        item += philox4x32_10(tuple(mix[4 * q:4 * q + 4]), (mix[(4 * q + 4) % 16] ^ k0, mix[(4 * q + 5) % 16] ^ k1))
    return item


def dataset(keys, items):
    cache = {}
    return [dataset_item(keys, j, cache) for j in range(items)]


def lane_cmix(wkey, data, lane):
    pages = len(data) // 2
    mix = []
    for s in range(8):
        mix += philox4x32_10((lane, s, 1, 0x57), wkey)
    for a in range(128):
        x = fnv(a ^ lane, mix[a % 32])
        pg = pick(x, pages)
        page = data[2 * pg] + data[2 * pg + 1]
        mix = [fnv(mix[w], page[w]) for w in range(32)]
    return [fnv(fnv(fnv(mix[4 * i], mix[4 * i + 1]), mix[4 * i + 2]), mix[4 * i + 3]) for i in range(8)]


def lane_leaf(g, lane, cmix):
    return sha256(b"\x13", u32(g), u32(lane), struct.pack("<8I", *cmix))


def phase_b(keys, items, walk_nonce=bytes(32)):
    data = dataset(keys, items)
    wkey = walk_key(keys, walk_nonce)
    leaves = [lane_leaf(keys["g"], lane, lane_cmix(wkey, data, lane)) for lane in range(items // 16)]
    return merkle_root(leaves)


# ---- everything ----

def prove(ch, walk_nonce=bytes(32)):
    """{"master", "gpus": [{"g", "keys", "product_roots", "root_a", "root_b"}]}, hashes as hex."""
    mk = master(ch)
    gpus = []
    for g, work in enumerate(ch["gpus"]):
        keys = gpu_keys(mk, g)
        roots, root_a = phase_a(keys, work)
        root_b = phase_b(keys, work["items"], walk_nonce) if work["items"] else None
        gpus.append({
            "g": g,
            "keys": [list(keys["A"]), list(keys["B"]), list(keys["D"]), list(walk_key(keys, walk_nonce))],
            "product_roots": [r.hex() for r in roots],
            "root_a": root_a.hex(),
            "root_b": root_b.hex() if root_b is not None else None,
        })
    return {"master": mk.hex(), "walk_nonce": walk_nonce.hex(), "gpus": gpus}


def checksums(seed, dim, count, items=0):
    """The guide's plain mode: (hex(R_A,0), hex(R_B,0) or None)."""
    out = prove(plain_challenge(seed, dim, count, items))["gpus"][0]
    return out["root_a"], out["root_b"]
