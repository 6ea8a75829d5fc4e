"""Regenerate the Python modules of proto/ from the .proto sources.

Run `python -m tensorai.proto.generate` (needs grpcio-tools, a dev dependency). The output is
deterministic for a given grpcio-tools version, so tests/test_proto_generated.py regenerates into a
temporary folder and fails when the committed modules drift from the .proto files.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

PROTO_DIR = Path(__file__).resolve().parent
PROTO_FILES = ("deviceplugin_v1beta1.proto", "podresources_v1.proto", "tensorai_v1.proto")

# protoc writes `import foo_pb2 as foo__pb2` for sibling files; inside the package that must be
# a relative import or it only works with proto/ on sys.path.
_SIBLING_IMPORT = re.compile(r"^import (\w+_pb2) as (\w+)$", re.MULTILINE)


def generate(out_dir: Path) -> list[Path]:
    """Generate *_pb2.py, *_pb2.pyi and *_pb2_grpc.py for every .proto into out_dir."""
    import grpc_tools
    from grpc_tools import protoc  # dev dependency: imported here so runtime never needs it

    well_known = Path(grpc_tools.__file__).resolve().parent / "_proto"
    out_dir.mkdir(parents=True, exist_ok=True)
    args = [
        "protoc",
        f"-I{PROTO_DIR}",
        f"-I{well_known}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *(str(PROTO_DIR / name) for name in PROTO_FILES),
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed: {' '.join(args)}")
    written = sorted(p for p in out_dir.iterdir() if p.name.endswith(("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")))
    for path in written:
        text = path.read_text()
        path.write_text(_SIBLING_IMPORT.sub(r"from . import \1 as \2", text))
    return written


def main() -> int:
    out_dir = Path(sys.argv[1]) if len(sys.argv) > 1 else PROTO_DIR
    for path in generate(out_dir):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
