"""Index maps and generators for the ops that are not plain elementwise math.

(Filled family by family; each entry is registered with `@index_map` or `@generator`.)
"""

from __future__ import annotations
