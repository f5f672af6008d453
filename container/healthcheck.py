#!/usr/bin/python3
"""The image's HEALTHCHECK: exit 0 when LOACL's /readyz answers 200, 1 otherwise.

It asks the port LOACL listens on (LOACL_PORT) on loopback, or on LOACL_HOST when that names one
address; it needs nothing outside Python's standard library.
"""

import os
import sys
import urllib.error
import urllib.request

host = os.environ.get("LOACL_HOST", "127.0.0.1")
if host in ("", "0.0.0.0", "::"):
    host = "127.0.0.1"
if ":" in host:
    host = f"[{host}]"
url = f"http://{host}:{os.environ.get('LOACL_PORT', '8000')}/readyz"
try:
    with urllib.request.urlopen(url, timeout=4) as response:
        sys.exit(0 if response.status == 200 else 1)
except (OSError, urllib.error.URLError) as exc:
    print(f"{url}: {exc}", file=sys.stderr)
    sys.exit(1)
