"""MatryoshkaKV workbench: KV-cache compression by trainable orthogonal projections (see README.md).

Importing the package checks once whether the Hugging Face Hub is reachable and, when it is not (and neither
``HF_HUB_OFFLINE`` nor ``HF_DATASETS_OFFLINE`` is set), switches Hugging Face libraries offline at once, so that
an unreachable Hub is one line instead of a minute of retries (:func:`mkvlib.runtime.ensure_hub_reachable_or_offline`).
"""
from .runtime import ensure_hub_reachable_or_offline as _ensure_hub_reachable_or_offline

_ensure_hub_reachable_or_offline()
