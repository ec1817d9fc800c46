import os
import sys

# Tests import their shared helpers as `tests.oracle`; make the repository root importable.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("SLIMC_VERIFY", "1")

# Tests compile into a fresh cache folder of their own, never the user's.
import tempfile  # noqa: E402

os.environ["SLIMC_CACHE_DIR"] = tempfile.mkdtemp(prefix="slimc-test-cache-")
