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
ZERO_REF = 1e-12  # compare: a reference tensor with max|A| <= this counts as zero


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


def compare(ref_path, test_path, rtol, label=""):
    """Every tensor of ref must be in test with the same shape and
    max|A-B| <= rtol * max|A|; a reference with max|A| <= ZERO_REF counts as
    zero and then needs max|B| <= 1e-6. Prints "ok LABEL NAME (err X)" or
    "FAIL LABEL NAME: why" per tensor; returns the number of failures."""
    ref, _ = st_read(ref_path)
    test, _ = st_read(test_path)
    bad = 0
    for name, A in ref.items():
        what = f"{label}{name}"
        B = test.get(name)
        if B is None or A.shape != B.shape:
            why = f"missing in {test_path}" if B is None else f"shape {list(B.shape)}, want {list(A.shape)}"
            print(f"FAIL {what}: {why} (err {rel:.3g})")
            bad += 1
            continue
        A64, B64 = A.astype(np.float64), B.astype(np.float64)
        if not np.all(np.isfinite(B64)):
            print(f"FAIL {what}: non-finite values in {test_path}")
            bad += 1
            continue
        amax = float(np.abs(A64).max()) if A64.size else 0.0
        if amax <= ZERO_REF:
            err = float(np.abs(B64).max()) if B64.size else 0.0
            ok, rel = err <= 1e-6, err
            why = f"reference is zero (max|ref| = {amax:.3g}), max|test| = {err:.3g} > 1e-6"
        else:
            err = float(np.abs(A64 - B64).max())
            ok, rel = err <= rtol * amax, err / amax
            why = f"max|ref-test| = {err:.3g} > {rtol:g} * max|ref| = {rtol * amax:.3g}"
        if ok:
            print(f"ok {what} (err {rel:.3g})")
        else:
            print(f"FAIL {what}: {why} (err {rel:.3g})")
            bad += 1
    return bad
