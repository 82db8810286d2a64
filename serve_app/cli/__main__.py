"""``python -m serve_app.cli`` is ``serve-app``."""

import sys

from serve_app.cli import main

# Guarded: importing this module (tests/unit/test_imports.py imports every module) must not run the CLI.
if __name__ == "__main__":
    sys.exit(main())
