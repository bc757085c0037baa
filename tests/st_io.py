"""st_io.py - safetensors files and tensor comparison for the project's
Python test tools (torch_ref.py, vae_ref.py). Written with struct + json +
numpy so that the references share no code with the C side: u64 LE header
length, JSON header {name: {dtype, shape, data_offsets}}, data.
"""
import json
import os
import struct

import numpy as np

_NP_OF = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16, "F64": np.float64,
          "I32": np.int32, "I64": np.int64, "U8": np.uint8}


def st_read(path):
    """Returns ({name: np.ndarray}, metadata). BF16 is widened to float32."""
    with open(path, "rb") as f:
        buf = f.read()
    if len(buf) < 8:
        raise ValueError(f"{path}: too short for a safetensors file")
    (n,) = struct.unpack("<Q", buf[:8])
    if 8 + n > len(buf):
        raise ValueError(f"{path}: header length {n} exceeds the file")
    header = json.loads(buf[8:8 + n].decode("utf-8"))
    data = memoryview(buf)[8 + n:]
    meta = header.pop("__metadata__", None)
    out = {}
    for name, ent in header.items():
        dt = ent["dtype"]
        if dt not in _NP_OF:
            raise ValueError(f"{path}: tensor {name}: unsupported dtype {dt}")
        b, e = ent["data_offsets"]
        shape = tuple(ent["shape"])
        count = int(np.prod(shape)) if shape else 1
        npdt = np.dtype(_NP_OF[dt]).newbyteorder("<")
        if e - b != count * npdt.itemsize or b > e or e > len(data):
            raise ValueError(f"{path}: tensor {name}: bad data_offsets")
        a = np.frombuffer(data[b:e], dtype=npdt).reshape(shape)
        if dt == "BF16":
            a = (a.astype(np.uint32) << 16).view(np.float32)
        out[name] = np.array(a, dtype=a.dtype.newbyteorder("="))
    return out, meta


def st_dtypes(path):
    """{name: dtype} of a file, without reading the data."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n).decode("utf-8"))
    header.pop("__metadata__", None)
    return {k: v["dtype"] for k, v in header.items()}


def _to_bf16_bits(a):
    """float32 -> bfloat16 bits, round to nearest even (NaN kept NaN)."""
    a = np.ascontiguousarray(a, dtype=np.float32)
    u = a.view(np.uint32).astype(np.uint64)
    r = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    r[np.isnan(a)] = 0x7FC0
    return r


def atomic_write(path, parts):
    """Writes the byte strings to path: temp name, fsync, rename."""
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "wb") as f:
        for p in parts:
            f.write(p)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def st_write(path, tensors, dtypes=None, meta=None):
    """Atomically writes {name: array}. dtypes: one of "F32", "BF16", "I32"
    for every tensor, or {name: dtype}; by default F32 for floats and I32 for
    integers."""
    header, chunks, off = {}, [], 0
    for name, a in tensors.items():
        a = np.asarray(a)
        dt = dtypes if isinstance(dtypes, str) else (dtypes or {}).get(name)
        dt = dt or ("I32" if np.issubdtype(a.dtype, np.integer) else "F32")
        if dt == "F32":
            raw = np.ascontiguousarray(a, dtype="<f4").tobytes()
        elif dt == "BF16":
            raw = _to_bf16_bits(a).astype("<u2").tobytes()
        elif dt == "I32":
            raw = np.ascontiguousarray(a, dtype="<i4").tobytes()
        else:
            raise ValueError(f"cannot write dtype {dt}")
        header[name] = {"dtype": dt, "shape": list(a.shape), "data_offsets": [off, off + len(raw)]}
        chunks.append(raw)
        off += len(raw)
    if meta is not None:
        header["__metadata__"] = meta
    hb = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hb += b" " * ((8 - len(hb) % 8) % 8)
    atomic_write(path, [struct.pack("<Q", len(hb)), hb] + chunks)


def compare(ref_path, test_path, rtol, atol, label="", atol_rel=0.0):
    """Element-wise: every tensor of ref must be in test with the same shape,
    finite, and for every element
        |A - B| <= atol + atol_rel * max|A| + rtol * |A|,
    and where |A| is above the absolute part of that allowance, B must have A's
    sign (an element that large cannot flip sign within the bound unless rtol
    is near 1, so this only makes the rule explicit). A bound on max|A-B|
    relative to max|A| alone would let the small entries of a tensor be wrong,
    sign included; atol covers the entries that float32 rounding of sums of
    larger terms leaves near zero (an all-zero A needs |B| <= atol).
    Prints "ok LABEL NAME (ratio R, err E)" per tensor, R the worst element's
    |A-B| over its allowance (pass: R <= 1) and E = max|A-B| / max|A| (absolute
    where all of A is below the floor), or
    "FAIL LABEL NAME: why" naming the worst element (index, ref, test); then
    one "# worst ..." line for the whole file. Returns the number of failures."""
    ref, _ = st_read(ref_path)
    test, _ = st_read(test_path)
    bad, worst = 0, (-1.0, "")
    for name, A in ref.items():
        what = f"{label}{name}"
        B = test.get(name)
        if B is None or A.shape != B.shape:
            why = f"missing in {test_path}" if B is None else f"shape {list(B.shape)}, want {list(A.shape)}"
            print(f"FAIL {what}: {why}")
            bad += 1
            continue
        A64, B64 = A.astype(np.float64), B.astype(np.float64)
        if not np.all(np.isfinite(B64)):
            print(f"FAIL {what}: non-finite values in {test_path}")
            bad += 1
            continue
        if A64.size == 0:
            print(f"ok {what} (empty)")
            continue
        amax = float(np.abs(A64).max())
        floor = atol + atol_rel * amax
        diff = np.abs(A64 - B64)
        allow = floor + rtol * np.abs(A64)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(allow > 0, diff / allow, np.where(diff > 0, np.inf, 0.0))
        flips = (np.abs(A64) > floor) & (np.sign(A64) != np.sign(B64))
        i = int(np.argmax(flips)) if flips.any() else int(np.argmax(ratio))
        r = float(ratio.flat[i])
        idx = list(np.unravel_index(i, A.shape)) if A.shape else []
        at = f"{what}{idx} ref {A64.flat[i]:.9g} test {B64.flat[i]:.9g}"
        # E relative to max|A|, or absolute where all of A is below the floor
        err = f"err {diff.max() / amax:.3g}" if amax > floor else f"max|diff| {diff.max():.3g}, |ref| <= atol"
        if r > worst[0]:
            worst = (r, at)
        if flips.any():
            print(f"FAIL {what}: {int(flips.sum())} elements with |ref| > {floor:.3g} have the wrong sign, first {at} ({err})")
            bad += 1
        elif r <= 1:
            print(f"ok {what} (ratio {r:.3g}, {err})")
        else:
            print(f"FAIL {what}: {int((ratio > 1).sum())} of {A.size} elements outside |ref-test| <= "
                  f"{floor:.3g} + {rtol:g}|ref|, worst {at} (|diff| {diff.flat[i]:.3g}, {r:.3g}x the allowance; {err})")
            bad += 1
    if worst[0] >= 0:
        print(f"# worst element: {worst[1]}, {worst[0]:.3g} of its allowance "
              f"(atol {atol:g}, atol_rel {atol_rel:g}, rtol {rtol:g})")
    return bad


def compare_norms(ref_path, test_path, max_rel, min_rel, label=""):
    """Per tensor: E = ||A - B|| / ||A|| (Frobenius) must lie in
    [min_rel, max_rel]: a computation that rounds its operands on purpose (bf16
    products) is held to a bound on the whole tensor's error, not on each
    element (an element that is a small difference of large terms keeps no
    relative precision), and the largest E >= min_rel shows that it did round. Prints
    "ok LABEL NAME (err E)" or "FAIL LABEL NAME: why", then "# worst ...".
    Returns the number of failures."""
    ref, _ = st_read(ref_path)
    test, _ = st_read(test_path)
    bad, worst, least = 0, (-1.0, ""), (float("inf"), "")
    for name, A in ref.items():
        what = f"{label}{name}"
        B = test.get(name)
        if B is None or A.shape != B.shape:
            print(f"FAIL {what}: {'missing' if B is None else 'shape ' + str(list(B.shape))}")
            bad += 1
            continue
        A64, B64 = A.astype(np.float64), B.astype(np.float64)
        norm = float(np.linalg.norm(A64))
        if not np.all(np.isfinite(B64)) or norm == 0.0:
            print(f"FAIL {what}: {'non-finite values' if norm else 'an all-zero reference'}")
            bad += 1
            continue
        e = float(np.linalg.norm(A64 - B64)) / norm
        worst = max(worst, (e, what))
        least = min(least, (e, what))
        if e > max_rel:
            print(f"FAIL {what}: err {e:.3g} > {max_rel:g}")
            bad += 1
        else:
            print(f"ok {what} (err {e:.3g})")
    if worst[0] < min_rel:
        print(f"FAIL {label}rounded: the largest err {worst[0]:.3g} < {min_rel:g} (were the operands rounded?)")
        bad += 1
    print(f"# error ||ref - test|| / ||ref|| from {least[0]:.3g} ({least[1]}) to {worst[0]:.3g} ({worst[1]})")
    return bad
