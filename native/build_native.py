"""cffi builder (API mode, out of line) for colo_plane._native._lib.

The public headers, native/colo.h and the stream's native/stream_format.h,
are both the C headers and the cdef: the headers are the single source of
truth.  The Xen backend is compiled in only where xenctrl.h is
present (xen.c and XEN_SOURCES); elsewhere xen.c builds its "not built"
stubs alone.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SOURCES = [
    "error.c",
    "hash.c",
    "io.c",
    "bitmap.c",
    "domain.c",
    "sim.c",
    "service.c",
    "stream.c",
    "checkpoint.c",
    "arm.c",
    "proxyio.c",
    "proxy.c",
    "mirror.c",
    "netport.c",  # the NIC proxy: AF_PACKET ports, frames, flows, compare, rewrite, thread
    "netframe.c",
    "nettable.c",
    "tcpcompare.c",
    "rewriter.c",
    "netproxy.c",
    "bench.c",
    "xen.c",  # the backend where xenctrl.h is, its "not built" stubs elsewhere
]
# The rest of the Xen backend, one file a concern (native/xen_internal.h):
# compiled only with xenctrl.h.
XEN_SOURCES = [
    "xen_store.c",
    "xen_p2m.c",
    "xen_map.c",
    "xen_dirty.c",
]
# The public headers, in the order the C side includes them (the cdef).
CDEF_HEADERS = ["colo.h", "stream_format.h"]
XEN_HEADER_DIRS = ["/usr/include", "/usr/local/include"]


def _package_version() -> str:
    # colo_plane/__init__.py holds the one version string (pyproject reads it too).
    text = (ROOT / "colo_plane" / "__init__.py").read_text()
    match = re.search(r'^__version__\s*=\s*"([^"]+)"', text, re.MULTILINE)
    if match is None:
        raise RuntimeError("no __version__ in colo_plane/__init__.py")
    return match.group(1)


def _cdef() -> str:
    # cffi's parser takes the headers minus comments; constants with plain
    # integer values are fine as "#define NAME 123".
    return "\n".join((HERE / h).read_text() for h in CDEF_HEADERS)


def _have_xen() -> bool:
    if os.environ.get("COLO_NO_XEN") == "1":
        return False
    return any((Path(d) / "xenctrl.h").exists() for d in XEN_HEADER_DIRS)


def _make_ffi() -> FFI:
    ffi = FFI()
    ffi.cdef(_cdef())
    have_xen = _have_xen()
    define_macros = [("COLO_VERSION", f'"{_package_version()}"'), ("_GNU_SOURCE", "1")]
    libraries = ["pthread"]
    sources = list(SOURCES)
    if have_xen:
        define_macros.append(("COLO_HAVE_XEN", "1"))
        libraries += ["xenctrl", "xenforeignmemory"]
        sources += XEN_SOURCES
    print(
        "colo native: xen backend %s" % ("built" if have_xen else "not built: xenctrl.h not found"),
        file=sys.stderr,
    )
    ffi.set_source(
        "colo_plane._native._lib",
        "#include <stdint.h>\n" + "".join(f'#include "{h}"\n' for h in CDEF_HEADERS),
        sources=[str((HERE / s).relative_to(ROOT)) for s in sources],
        include_dirs=[str(HERE.relative_to(ROOT))],
        define_macros=define_macros,
        libraries=libraries,
        extra_compile_args=[
            "-O2",
            "-std=gnu11",
            "-Wall",
            "-Wextra",
            "-Werror=implicit-function-declaration",
            "-fvisibility=hidden",
        ],
    )
    return ffi


ffibuilder = _make_ffi()

if __name__ == "__main__":
    # Standalone build into the source tree (used where pip is not, e.g. the
    # Xen lab's dom0): lands colo_plane/_native/_lib*.so.
    ffibuilder.compile(tmpdir=str(ROOT), verbose=True)
