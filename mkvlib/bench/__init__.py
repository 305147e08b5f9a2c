"""Measure the compressed cache against DynamicCache and transformers' 4-bit quantized cache (quanto).

What is measured, per cache kind ("compressed", "dynamic", "quanto"), for a batch of ``batch`` prompts of
``context`` tokens followed by ``new_tokens`` greedy decode steps:

- cache bytes: the sum of the stored tensors' bytes after decoding (projection matrices reported separately);
- decode tokens/s: batch x steps / seconds. All kinds decode from the *same* prefilled prompt (the compressed and
  quantized caches are filled from the DynamicCache's keys and values, which is exactly what their own prefill
  would store), interleaved over ``repeats`` rounds; the medians are reported (the CPU may be shared);
- prefill seconds (chunked, ``prefill_chunk`` tokens a forward) and peak memory: CPU, the process's peak RSS
  growth over the run; GPU, max_memory_allocated growth. Each kind runs in a fresh subprocess for a clean peak.

:func:`capacity` turns measured bytes per token plus measured fixed overhead into the largest batch x context
that fits in a memory limit. Introduced in notebook 05; ``mkv bench`` is the command line.
"""
# the names notebook 05 and the tests read as mkvlib.bench.NAME
from .caches import cache_bytes
from .checks import simulated_gap
from .config import BenchConfig
from .memory import capacity, memory_model, predicted_peak
from .plots import plot_capacity, plot_decode_speedup, speed_table
from .process import measure_in_subprocess
from .run import budget_sweep, run_bench
from .speed import prompt_ids
