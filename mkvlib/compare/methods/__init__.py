"""The methods of the comparison bench, one module each; importing this package registers them all."""
from . import composed, eviction, ladder, projection, quant, svd, think  # noqa: F401  (each registers its methods)
