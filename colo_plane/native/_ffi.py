"""The one import of the compiled module (colo_plane._native._lib), checked against the package version."""

from __future__ import annotations

from typing import Any, Final

from colo_plane import __version__
from colo_plane._native._lib import ffi as _cffi_ffi
from colo_plane._native._lib import lib as _cffi_lib

# cffi's objects are untyped; everything that touches them is in this package.
ffi: Final[Any] = _cffi_ffi
lib: Final[Any] = _cffi_lib


def version() -> str:
    """The package version compiled into the library."""
    return str(ffi.string(lib.colo_version()).decode())


def xen_built() -> bool:
    """Whether the Xen backend was compiled in (xenctrl.h at build time)."""
    return bool(lib.colo_xen_built())


def _check_build() -> None:
    """A stale or foreign build fails loudly at import, not later."""
    built = version()
    if built != __version__:
        raise ImportError(
            f"colo_plane native library is version {built}, the package is {__version__}: "
            "rebuild it (make build)"
        )


_check_build()
