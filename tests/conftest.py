import os
import sys

# Tests import their shared helpers as `tests.oracle`; make the repository root importable.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("SLIMC_VERIFY", "1")
# The Winograd cost model uses its built-in coefficients: which layers get Winograd must not
# depend on timings taken while the tests load the machine.
os.environ.setdefault("SLIMC_WINOGRAD_CALIBRATE", "0")
os.environ.setdefault("SLIMC_COST_MODEL", "builtin")

# Tests compile into a fresh cache folder of their own, never the user's.
import tempfile  # noqa: E402

os.environ["SLIMC_CACHE_DIR"] = tempfile.mkdtemp(prefix="slimc-test-cache-")


import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _deterministic_module_rngs(request):
    """Test modules draw data from a module-level generator; reseed it per test so a test's
    data does not depend on which tests ran before it in the same worker (xdist)."""
    import zlib

    import numpy as np

    for name in ("RNG", "rng"):
        gen = getattr(request.module, name, None)
        if isinstance(gen, np.random.Generator):
            setattr(request.module, name, np.random.default_rng(zlib.crc32(request.node.nodeid.encode())))
    yield
