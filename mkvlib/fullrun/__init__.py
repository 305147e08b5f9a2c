"""`mkv fullrun`: the full-size run in one command, within a time budget, its results in at most eight files.

    mkv fullrun --minutes 10 --out DIR [--model M] [--stages smoke,train,...] [--train-minutes 6] [--lmeval-limit N]

Stages, in order (:data:`.config.STAGES`): smoke, train, search, suite, bench, lmeval, lora (if time remains), one
module each; :mod:`.runner` drives them and :mod:`.clock` shares out the minutes.

Files under ``--out`` (:data:`.context.FILES`): summary.json (every stage's status, times and numbers), log.txt,
train.safetensors, trajectory.json, lmeval.csv, bench.json, figures.png, and train.ckpt while training runs.
Profiles (:data:`.config.PROFILES`) size each stage for a GPU, a CPU, or the tiny model of the test suite.
"""
