"""Byte-compile what ``loacl serve`` imports as it starts, and LOACL itself, at build time.

Run as root in the image by the venv's Python. Compiling every installed module would add about
30 MB of ``.pyc`` files, most of them for parts of the SDKs the server never loads; a module left
out is compiled in memory when first imported (the server's user cannot write the cache), which
costs time only at that first import.
"""

from __future__ import annotations

import compileall
import importlib
import sys
from pathlib import Path

# What `loacl serve` loads before it answers: the CLI, the app and everything it wires (the
# providers bring the openai SDK), and uvicorn's loop, HTTP and WebSocket implementations.
SERVE_IMPORTS = (
    "loacl.cli",
    "loacl.http.app",
    "loacl.http.serving",
    "loacl.logs",
    "uvicorn.lifespan.on",
    "uvicorn.loops.uvloop",
    "uvicorn.protocols.http.httptools_impl",
    "uvicorn.protocols.websockets.websockets_sansio_impl",
)


def main() -> int:
    if sys.dont_write_bytecode:
        print("precompile: bytecode writing is off (PYTHONDONTWRITEBYTECODE)", file=sys.stderr)
        return 1
    for name in SERVE_IMPORTS:
        importlib.import_module(name)
    import loacl

    package = Path(loacl.__file__).parent
    return 0 if compileall.compile_dir(package, quiet=1) else 1


if __name__ == "__main__":
    sys.exit(main())
