"""The state one full run shares between its stages: the model, the output folder and its files, the log, the
summary (rewritten atomically after every stage), and the projections and trajectory the stages hand on."""
from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path


# The files a run may write under --out (at most 8; train.ckpt only while training runs or after a cut-off)
FILES = {"summary": "summary.json", "log": "log.txt", "projections": "train.safetensors", "checkpoint": "train.ckpt",
         "trajectory": "trajectory.json", "lmeval": "lmeval.csv", "bench": "bench.json", "figures": "figures.png"}


class StageSkipped(Exception):
    """A stage cannot run here (a missing package, files or an earlier result); the message says why."""


class StageError(RuntimeError):
    """A stage ran and failed a check; the message says which and by how much."""


class RunContext:
    def __init__(self, config, profile, model, tokenizer, out: Path, budget):
        self.config, self.profile, self.budget = config, profile, budget
        self.model, self.tokenizer, self.out = model, tokenizer, Path(out)
        self.work = Path(tempfile.mkdtemp(prefix="mkv-fullrun-"))   # scratch outside --out (fitted PCA)
        self.summary: dict = {"stages": {}}
        self.measured: dict = {}           # numbers one stage hands to a later one (seconds per training step)
        self.pca_spec = self.trained_spec = self.trajectory_path = None
        self.train_batch = profile.train_batch
        self._training_data = None

    # --- files and log ------------------------------------------------------------------------------------
    def path(self, key: str) -> Path:
        return self.out / FILES[key]

    def log(self, message: str) -> None:
        """One line on stderr and in log.txt, stamped with the run's elapsed time."""
        line = f"[{self.budget.elapsed():7.1f}s] {message}"
        print(line, file=sys.stderr, flush=True)
        with open(self.path("log"), "a", encoding="utf-8") as fh:
            fh.write(line + "\n")

    def write_summary(self) -> None:
        from ..core.io import write_json

        self.summary["elapsed_s"] = round(self.budget.elapsed(), 1)
        self.summary["updated"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self.summary["files"] = {p.name: p.stat().st_size for p in sorted(self.out.iterdir()) if p.is_file()
                                 and not p.name.startswith(".")}
        write_json(self.path("summary"), self.summary)

    def close(self) -> None:
        shutil.rmtree(self.work, ignore_errors=True)

    # --- what the stages hand on ------------------------------------------------------------------------------
    @property
    def device(self):
        return next(self.model.parameters()).device

    def pca(self):
        """The PCA projections: the shipped ones for this model, else fitted once on calibration text."""
        from ..core.projections import resolve_projections

        if self.pca_spec is None:
            try:
                resolve_projections("pca", self.model)
                self.pca_spec, source = "pca", "shipped"
            except FileNotFoundError:
                self.pca_spec, source = str(self.fit_pca()), "fitted"
            proj = resolve_projections(self.pca_spec, self.model)
            self.summary["pca"] = {"source": source, "fingerprint": proj.fingerprint()}
            self.log(f"PCA projections: {source} ({proj.fingerprint()})")
        return resolve_projections(self.pca_spec, self.model)

    def fit_pca(self) -> Path:
        from ..corpora import token_blocks
        from ..core.pca import fit_pca
        from ..core.stats import collect_kv_stats

        corpus = self.corpus("calibration")
        seq = min(self.profile.train_seq, 512)
        blocks = token_blocks(self.tokenizer, corpus, seq, self.profile.pca_tokens, seed=self.config.seed)
        stats = collect_kv_stats(self.model, blocks, self.profile.eval_batch, progress=False, corpus=corpus)
        proj = fit_pca(stats, model_name=getattr(self.model, "mkv_name", None))
        return proj.save(self.work / "pca.safetensors")

    def trained(self):
        """The trained projections: this run's (train stage), else the ones shipped for the model."""
        from ..core.projections import resolve_projections

        if self.trained_spec is None:
            try:
                resolve_projections("trained", self.model)
                self.trained_spec = "trained"
            except FileNotFoundError:
                raise StageSkipped("no trained projections: the train stage did not run, and none are shipped for "
                                   f"{getattr(self.model, 'mkv_name', '?')}") from None
        proj = resolve_projections(self.trained_spec, self.model)
        if self.summary.get("trained", {}).get("fingerprint") != proj.fingerprint():
            self.summary["trained"] = {"source": "shipped" if self.trained_spec == "trained" else "this run",
                                       "fingerprint": proj.fingerprint()}
        return proj

    def prefetch_training_data(self) -> None:
        """Start tokenising the training pool (and the periodic evaluation's suite text) in a background thread,
        so that it overlaps the smoke test: a GPU run's pool is millions of tokens, and the tokenizer releases the
        GIL. The thread has its own copy of the tokenizer. Text sampled from the model is made in the foreground."""
        import copy
        import threading

        from ..commands.train import load_training_blocks

        p, corpus, box = self.profile, self.corpus("training"), {}
        if "sampled" in corpus:
            return
        tokenizer = copy.deepcopy(self.tokenizer)

        def work():
            try:
                box["data"] = load_training_blocks(tokenizer, [corpus], p.train_pool, p.train_seq,
                                                   p.train_eval_tokens, seed=self.config.seed)
            except BaseException as err:  # noqa: BLE001 - handed to the train stage, which raises it
                box["error"] = err

        thread = threading.Thread(target=work, name="mkv-fullrun-training-data", daemon=True)
        thread.start()
        self._training_data = (thread, box)

    def training_data(self):
        """(train blocks, eval blocks) of the training pool: the prefetched ones, else loaded now."""
        from ..commands.train import load_training_blocks

        if self._training_data is None:
            p = self.profile
            return load_training_blocks(self.tokenizer, [self.corpus("training")], p.train_pool, p.train_seq,
                                        p.train_eval_tokens, seed=self.config.seed)
        thread, box = self._training_data
        thread.join()
        self._training_data = None
        if "error" in box:
            raise box["error"]
        return box["data"]

    def corpus(self, role: str) -> str:
        """Training or calibration text: the diverse mixture with a data folder; Python's documentation for the
        tiny model (its byte tokenizer would make the model's own samples meaningless)."""
        from ..corpora import default_corpus

        if self.config.tiny:
            return "pydoc-train"
        return default_corpus(role)
