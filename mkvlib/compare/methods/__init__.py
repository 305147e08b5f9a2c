"""The methods of the comparison bench, one module each; importing this package registers them all."""
from .projection import PCA, Matryoshka, ProjectionMethod

__all__ = ["PCA", "Matryoshka", "ProjectionMethod"]
