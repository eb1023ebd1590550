"""Hostile input files for the tests of issue 18: .npz archives that inflate to gigabytes, .npy headers that
declare them, PNGs that declare billions of pixels, a 3 GB model file; and a runner that executes CLI commands
under an address-space limit (run as a script: tests/test_hostile.py calls it in a subprocess)."""
from __future__ import annotations

import contextlib
import io
import json
import os
import resource
import struct
import sys
import zlib
from pathlib import Path

import numpy as np

CHUNK = 8 << 20


def npy_header(shape: tuple, dtype=np.float32) -> bytes:
    """The bytes of a version 1.0 .npy header declaring shape and dtype (C order)."""
    stream = io.BytesIO()
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": shape}
    np.lib.format.write_array_header_1_0(stream, header)
    return stream.getvalue()


def _deflated(prefix: bytes, zeros: int) -> bytes:
    """The raw deflate stream of prefix + zeros zero bytes, built from one compressed chunk repeated (full flushes
    make the chunks' compressed bytes identical): well under a second whatever zeros is."""
    packer = zlib.compressobj(9, zlib.DEFLATED, -15)
    first_zeros = min(zeros, CHUNK)
    parts = [packer.compress(prefix + bytes(first_zeros)) + packer.flush(zlib.Z_FULL_FLUSH)]
    left = zeros - first_zeros
    if left >= CHUNK:
        chunk = packer.compress(bytes(CHUNK)) + packer.flush(zlib.Z_FULL_FLUSH)
        parts.append(chunk * (left // CHUNK))
        left %= CHUNK
    parts.append(packer.compress(bytes(left)) + packer.flush())
    return b"".join(parts)


def zip_bomb(path: Path, member: str, shape: tuple, inflated: int, declared: int) -> Path:
    """An .npz holding one member (name.npy) whose .npy header declares shape (float32), whose deflate stream
    inflates to `inflated` bytes, and whose zip entry declares `declared` bytes uncompressed (< 4 GiB). Its CRC-32
    is that of the first `declared` bytes (what a reader that trusts the entry checks), for declared <= 8 MiB."""
    header = npy_header(shape)
    data = _deflated(header, inflated - len(header))
    crc = zlib.crc32((header + bytes(CHUNK))[:declared])
    name = member.encode()
    local = struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, 8, 0, 0x21, crc, len(data), declared, len(name), 0)
    central = struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, 8, 0, 0x21, crc, len(data), declared,
                          len(name), 0, 0, 0, 0, 0, 0)
    body = local + name + data
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 1, 1, len(central) + len(name), len(body), 0)
    path.write_bytes(body + central + name + end)
    return path


def header_only_npy(path: Path, shape: tuple) -> Path:
    """A .npy file whose header declares shape (float32) and that holds no data."""
    path.write_bytes(npy_header(shape))
    return path


def png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG that declares width x height grey pixels (IHDR) and holds no pixel data worth decoding."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) +
                     chunk(b"IEND", b""))
    return path


def sparse_file(path: Path, size: int) -> Path:
    """A file of size bytes that takes no disk space (a hole), starting with a few garbage bytes."""
    with open(path, "wb") as file:
        file.write(b"\x08\x07garbage")
        file.truncate(size)
    return path


def _peak_mib() -> float:
    """This process's peak resident memory (VmHWM), MiB."""
    with open("/proc/self/status") as status:
        return int(next(line for line in status if line.startswith("VmHWM:")).split()[1]) / 1024


def main(limit_bytes: int, cases: list) -> None:
    """Run each CLI command (a list of words) under RLIMIT_AS = limit_bytes in this process; one JSON line each:
    exit code, the stderr lines, stdout's length and the peak resident memory so far."""
    resource.setrlimit(resource.RLIMIT_AS, (limit_bytes, limit_bytes))
    os.environ.pop("ONNXLRP_DEBUG", None)
    from onnxlrp.cli import run
    for args in cases:
        err, out = io.StringIO(), io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            try:
                code = run(args)
            except MemoryError:
                code = "MemoryError"
        print(json.dumps({"args": args, "code": code, "stderr": err.getvalue().splitlines(),
                          "stdout_chars": len(out.getvalue()), "peak_mib": _peak_mib()}), flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]), json.loads(sys.argv[2]))
