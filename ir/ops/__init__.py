"""slimc's op set, one module per family. Importing this package registers every op."""

from . import elementwise, linalg, nn, reduce, tensor  # noqa: F401
from . import attention, layout, winograd  # noqa: F401
