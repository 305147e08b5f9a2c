"""LoRA fine-tuning with a compressed KV cache, in two stages (the paper's peft experiment). Notebook 06.

- :mod:`.data`: (prompt, response) examples from ARC-Easy, lm-eval tasks or instruction files; packed blocks
  with a loss mask on the responses
- :mod:`.adapter`: :class:`LoRASettings`, :func:`add_adapter` (peft), adapter identity hashes, :func:`merge`
- :mod:`.stages`: stage 1 (adapter alone, uncompressed) and stage 2 (projections with the adapter) trainers
- :mod:`.bundle`: adapter + projections + manifest in one folder, checked on load
- :mod:`.accuracy`: task accuracy of the merged model against budget, per kind of projections
- :mod:`.runs`: the ledger of the two-stage runs behind the committed accuracy table (what each run was)
"""
from .accuracy import (accuracy_curve, accuracy_table, committed_rows, curve, curves_table, evaluate_bundle,
                       keep_ratio, kept_table, plot_accuracy, plot_kept, read_rows)
from .adapter import LoRASettings, add_adapter, adapter_parameters, merge, weights_hash
from .bundle import (BundleMismatchError, BundleWeightsMissingError, load_bundle, load_merged, missing_weights,
                     read_manifest, save_bundle)
from .data import Example, arc_examples, encode, instruction_examples, load_examples, target_count
from .stages import (general_projections, identity_projections, stage1_config, stage1_trainer, stage2_config,
                     stage2_trainer)

__all__ = ["accuracy_curve", "accuracy_table", "adapter_parameters", "add_adapter", "arc_examples",
           "BundleMismatchError", "BundleWeightsMissingError", "committed_rows", "curve", "curves_table", "encode",
           "evaluate_bundle", "Example", "general_projections", "identity_projections", "instruction_examples",
           "keep_ratio", "kept_table", "load_bundle", "load_examples", "load_merged", "LoRASettings", "merge",
           "missing_weights", "plot_accuracy", "plot_kept", "read_manifest", "read_rows", "save_bundle",
           "stage1_config", "stage1_trainer", "stage2_config", "stage2_trainer", "target_count", "weights_hash"]
