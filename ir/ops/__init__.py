"""slimc's op set, one module per family. Importing this package registers every op."""

from . import conv, elementwise, linalg, norm, pool, reduce, spatial  # noqa: F401
from . import gather_scatter, tensor, tensor_gen  # noqa: F401
from . import attention, layout, quant, sparse, winograd  # noqa: F401
