"""Worker of tests/test_accelerate.py: make this process one of accelerate's CPU processes, then run the mkv
command line given as arguments (e.g. ``train ...``).

`mkv train` joins an accelerate launch through ``PartialState()`` (mkvlib/commands/common.py), which counts the
processes of a launch on GPUs; on a machine without GPUs the state must be told to use the CPU first. And
accelerate 1.15's ``launch --cpu`` starts one process unless mpirun is set up, so the test starts two through
torchrun (``accelerate launch --multi_gpu``), which this worker turns into CPU (gloo) processes.

With ``MKV_TEST_KEEP_STEP=N`` the checkpoint written at step N is also copied to ``<checkpoint>.stepN``: the state
an interrupted launch would leave, for a second launch to resume from.
"""
import os
import shutil
import sys

from accelerate.state import PartialState

from mkvlib.cli import main
from mkvlib.training.trainer import Trainer


def keep_checkpoint_of(step: int) -> None:
    save = Trainer.save

    def save_and_keep(self, path=None):
        written = save(self, path)
        if written is not None and self.step == step:
            shutil.copy(written, f"{written}.step{step}")
        return written

    Trainer.save = save_and_keep


if __name__ == "__main__":
    PartialState(cpu=True)
    if os.environ.get("MKV_TEST_KEEP_STEP"):
        keep_checkpoint_of(int(os.environ["MKV_TEST_KEEP_STEP"]))
    sys.exit(main(sys.argv[1:]))
