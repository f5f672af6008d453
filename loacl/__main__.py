from __future__ import annotations

import sys

from loacl.cli import main

sys.exit(main())
