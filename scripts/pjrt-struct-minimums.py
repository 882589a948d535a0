#!/usr/bin/env python3
"""Prints the minimum struct_size a PJRT plugin accepts for each argument struct.

Every PJRT C API entry point of an XLA-built plugin starts with
`pjrt::ActualStructSizeIsGreaterOrEqual(name, expected, actual)`; the name is a
RIP-relative `lea` into .rodata and `expected` an immediate `mov ecx, imm32` right before
the call. This scans .text for those call sites (x86-64 only; needs binutils' readelf and
nm, and numpy). It reads the plugin as data: nothing in it is loaded or run.

    scripts/pjrt-struct-minimums.py path/to/xla_cuda_plugin.so
The result for jax-cuda13-pjrt 0.11.2 is engine/src/pjrt/ffi/minimum_sizes.rs.
"""
import mmap
import subprocess
import sys

import numpy as np


def section(sections, name):
    for line in sections.splitlines():
        parts = line.split()
        if name in parts:
            i = parts.index(name)
            return int(parts[i + 2], 16), int(parts[i + 3], 16), int(parts[i + 4], 16)
    sys.exit(f"no {name} section")


def main(path):
    sections = subprocess.run(["readelf", "-S", "-W", path], capture_output=True, text=True, check=True).stdout
    tv, to, ts = section(sections, ".text")
    rv, ro, rs = section(sections, ".rodata")
    syms = subprocess.run(["nm", path], capture_output=True, text=True).stdout.splitlines()
    fn = [int(l.split()[0], 16) for l in syms if "4pjrt32ActualStructSizeIsGreaterOrEqual" in l]
    if not fn:
        sys.exit("pjrt::ActualStructSizeIsGreaterOrEqual not found (stripped plugin?)")
    with open(path, "rb") as f:
        m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        b = np.frombuffer(m, dtype=np.uint8, count=ts, offset=to)
        idx = np.nonzero(b[:-5] == 0xE8)[0]
        d = sum(b[idx + 1 + k].astype(np.int64) << (8 * k) for k in range(4))
        d = np.where(d >= 2**31, d - 2**32, d)
        calls = idx[np.isin(tv + idx + 5 + d, fn)]
        found = {}
        for c in calls:
            w = bytes(b[max(0, c - 48):c])
            name = expected = None
            for i in range(len(w) - 4):
                if i + 7 <= len(w) and w[i] in (0x48, 0x4C) and w[i + 1] == 0x8D and (w[i + 2] & 0xC7) == 0x05:
                    t = tv + (c - 48 + i) + 7 + int.from_bytes(w[i + 3:i + 7], "little", signed=True)
                    if rv <= t < rv + rs:
                        o = ro + (t - rv)
                        name = m[o:o + 96].split(b"\0")[0].decode(errors="replace")
                if w[i] == 0xB9:
                    expected = int.from_bytes(w[i + 1:i + 5], "little")
            if name and expected is not None:
                found.setdefault(name, set()).add(expected)
    for name in sorted(found):
        print(name, " ".join(str(x) for x in sorted(found[name])))


if __name__ == "__main__":
    main(sys.argv[1])
