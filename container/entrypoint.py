#!/opt/loacl/bin/python
"""The image's entrypoint.

``serve`` (the default command) runs LOACL's server. When a replica is configured
(``LOACL_REPLICA_URL``, or ``replica_url`` in a ``loacl.toml``), it first restores the database
from the replica if the data volume holds no events (``loacl restore --from-replica --if-empty``:
Litestream's restore, checked with SQLite's integrity check and ``audit verify`` before it is put
in place; nothing when the replica is empty), then runs the server under Litestream
(``litestream replicate -exec``), which ships every change and, on SIGTERM, stops the server and
syncs what is left before it exits.

Any other command is a ``loacl`` command: ``podman run --rm -v loacl-data:/data IMAGE audit
verify``.
"""

from __future__ import annotations

import io
import os
import shlex
import sys
from contextlib import redirect_stdout


def main(argv: list[str]) -> int:
    command = argv or ["serve"]
    if command[0] != "serve":
        os.execvp("loacl", ["loacl", *command])
    from loacl.cli import main as loacl
    from loacl.settings import SettingsError, load_settings

    try:
        replica = load_settings().replica_url
    except SettingsError:
        replica = None  # `loacl serve` names the bad setting
    if not replica:
        os.execvp("loacl", ["loacl", *command])
    code = loacl(["restore", "--from-replica", "--if-empty"])
    if code:
        return code
    printed = io.StringIO()
    with redirect_stdout(printed):
        code = loacl(["replica", "config"])
    if code:
        return code
    config = printed.getvalue().strip()
    sys.stdout.flush()
    # Litestream runs the server and stops with it; the server leaves Litestream to it.
    env = dict(os.environ, LOACL_UNDER_LITESTREAM="1")
    os.execvpe("litestream", [
        "litestream", "replicate", "-config", config, "-exec", shlex.join(["loacl", *command]),
    ], env)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
