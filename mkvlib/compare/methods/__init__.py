"""The methods of the comparison bench, one module each; importing this package registers them all."""
from .composed import MatryoshkaQuant, StreamingMatryoshka
from .eviction import SnapKV, Streaming
from .ladder import LadderMethod
from .projection import PCA, Matryoshka, ProjectionMethod
from .quant import Quant
from .svd import SVD
from .think import ThinK

__all__ = ["LadderMethod", "PCA", "Matryoshka", "MatryoshkaQuant", "ProjectionMethod", "Quant", "SnapKV", "Streaming",
           "StreamingMatryoshka", "SVD", "ThinK"]
