"""`mkv fullrun`: the full-size run in one command, within a time budget, its results in at most eight files.

    mkv fullrun --minutes 10 --out DIR [--model M] [--stages smoke,train,...] [--train-minutes 6] [--lmeval-limit N]

Stages, in order (one module each; :mod:`.runner` drives them, :mod:`.clock` shares out the minutes):

- :mod:`.smoke`: every stage's machinery once on the device (exactness, a training step, a search step,
  compressed-cache generation, lm-eval on a few items); the first failure stops the run
- :mod:`.train`: the projections trained from PCA on the diverse training text (KD only) for a time budget
- :mod:`.search`: the greedy rank search (proxy) for them, calibrated on the training mixture
- :mod:`.suite`: the out-of-domain suite at 50% / 37.5%, PCA uniform against trained uniform / adaptive
- :mod:`.bench`: decode tokens/s and memory at 8k context: CompressedCache against DynamicCache and StaticCache
- :mod:`.lmeval`: piqa / arc_easy / hellaswag at 100 ... 25% for the three methods (the Sweep engine)
- :mod:`.lora`: two-stage LoRA on ARC-Easy, if time remains

Files under ``--out`` (:data:`.context.FILES`): summary.json (every stage's status, times and numbers), log.txt,
train.safetensors, trajectory.json, lmeval.csv, bench.json, figures.png, and train.ckpt while training runs.
Profiles (:data:`.config.PROFILES`) size each stage for a GPU, a CPU, or the tiny model of the test suite.
"""
