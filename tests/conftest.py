import os
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import mixcl_arch  # noqa: E402,F401  (registers everything and patches basicsr before tests import it)
