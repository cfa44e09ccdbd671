"""Build steps setuptools cannot declare: the cffi module and the protobuf code."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
PROTO_OUT = "colo_plane/_proto"


def generate_proto(root: Path) -> None:
    """protoc proto/colo.proto -> colo_plane/_proto/colo_pb2*.py + .pyi under root.

    The import path maps proto/ to colo_plane/_proto/, so the generated code
    imports "from colo_plane._proto import colo_pb2".
    """
    (root / PROTO_OUT).mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"-I{PROTO_OUT}=proto",
        f"--python_out={root}",
        f"--pyi_out={root}",
        f"--grpc_python_out={root}",
        f"{PROTO_OUT}/colo.proto",
    ]
    subprocess.run(cmd, check=True, cwd=ROOT)


class BuildPyWithProto(build_py):
    def run(self) -> None:
        generate_proto(ROOT)  # the source tree, for editable installs
        super().run()
        if not self.editable_mode:
            generate_proto(Path(self.build_lib))


setup(
    cffi_modules=["native/build_native.py:ffibuilder"],
    cmdclass={"build_py": BuildPyWithProto},
)
