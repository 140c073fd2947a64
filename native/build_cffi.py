"""cffi build of the engine: compiles native/src/*.c into router._native.

The cdef is read from native/include/skiff.h itself, so the header stays the
one contract between C and Python.
"""

from __future__ import annotations

import re
from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent
HEADER = HERE / "include" / "skiff.h"
SOURCES = sorted(str(p.relative_to(HERE.parent)) for p in (HERE / "src").glob("*.c"))


def _cdef_text() -> str:
    text = HEADER.read_text()
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    lines = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#include") or stripped.startswith("#ifndef") or stripped.startswith("#endif"):
            continue
        if stripped.startswith("#define SKIFF_H"):
            continue
        if stripped.startswith("#define"):
            # plain integer constants only; cffi needs literal values for array sizes
            parts = stripped.split(None, 2)
            lines.append(f"#define {parts[1]} {parts[2].split()[0]}")
            continue
        lines.append(line)
    return "\n".join(lines)


ffibuilder = FFI()
ffibuilder.cdef(_cdef_text())
ffibuilder.set_source(
    "router._native",
    '#include "skiff.h"',
    sources=SOURCES,
    include_dirs=["native/include", "native/src"],
    define_macros=[("_GNU_SOURCE", "1")],
    extra_compile_args=["-std=gnu11", "-O2", "-Wall", "-Wextra", "-Werror", "-Wno-unused-parameter"],
    libraries=["ssl", "crypto", "pthread"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
