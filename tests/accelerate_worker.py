"""Worker of tests/test_accelerate.py: make this process one of accelerate's CPU processes, then run the mkv
command line given as arguments (e.g. ``train ...``).

`mkv train` joins an accelerate launch through ``PartialState()`` (mkvlib/commands/common.py), which counts the
processes of a launch on GPUs; on a machine without GPUs the state must be told to use the CPU first. And
accelerate 1.15's ``launch --cpu`` starts one process unless mpirun is set up, so the test starts two through
torchrun (``accelerate launch --multi_gpu``), which this worker turns into CPU (gloo) processes.
"""
import sys

from accelerate.state import PartialState

from mkvlib.cli import main

if __name__ == "__main__":
    PartialState(cpu=True)
    sys.exit(main(sys.argv[1:]))
