"""An independent, deliberately plain implementation of GPoW-1 (shared/GPOW.md) in Python,
written from the specification, to cross-check the Rust prover's checksums bit for bit."""

import hashlib
import struct

M0, M1 = 0xD2511F53, 0xCD9E8D57
W0, W1 = 0x9E3779B9, 0xBB67AE85
MASK = 0xFFFFFFFF


def philox4x32_10(ctr, key):
    c0, c1, c2, c3 = ctr
    k0, k1 = key
    for rnd in range(10):
        if rnd:
            k0, k1 = (k0 + W0) & MASK, (k1 + W1) & MASK
        p0, p1 = M0 * c0, M1 * c2
        c0, c1, c2, c3 = ((p1 >> 32) ^ c1 ^ k0) & MASK, p1 & MASK, ((p0 >> 32) ^ c3 ^ k1) & MASK, p0 & MASK
    return c0, c1, c2, c3


def keys(seed32, m, n, k, count, nonce=bytes(32), executor_key=bytes(32), validator_key=bytes(32)):
    canonical = seed32 + struct.pack("<IIII", m, n, k, count) + nonce + executor_key + validator_key
    master = hashlib.sha256(b"gpow/v1" + canonical).digest()
    out = []
    for tag in (b"A", b"B"):
        h = hashlib.sha256(master + tag).digest()
        out.append(struct.unpack("<II", h[:8]))
    return out


def matrix(rows, cols, p, key):
    """rows x cols int8, row-major, as a list of rows."""
    result = []
    for i in range(rows):
        row = []
        for q in range(cols // 16):
            words = philox4x32_10((i, q, p, 0), key)
            for b in struct.pack("<IIII", *words):
                row.append(b - 256 if b > 127 else b)
        result.append(row)
    return result


def merkle_root(leaves):
    level = list(leaves)
    while len(level) > 1:
        nxt = []
        for j in range(0, len(level), 2):
            if j + 1 < len(level):
                nxt.append(hashlib.sha256(b"\x01" + level[j] + level[j + 1]).digest())
            else:
                nxt.append(level[j])
        level = nxt
    return level[0]


def checksum(seed, dim, count):
    seed32 = struct.pack("<Q", seed) + bytes(24)
    m = n = k = dim
    key_a, key_b = keys(seed32, m, n, k, count)
    product_leaves = []
    for p in range(count):
        a = matrix(m, k, p, key_a)
        b = matrix(k, n, p, key_b)
        bt = list(zip(*b))
        leaves = []
        for i in range(m):
            row = [sum(x * y for x, y in zip(a[i], bt[j])) for j in range(n)]
            leaves.append(hashlib.sha256(b"\x00" + struct.pack("<II", p, i) + struct.pack(f"<{n}i", *row)).digest())
        r_p = merkle_root(leaves)
        product_leaves.append(hashlib.sha256(b"\x02" + struct.pack("<I", p) + r_p).digest())
    return merkle_root(product_leaves).hex()
