"""``python -m mkvlib.bench PAYLOAD``: the fresh process in which :func:`mkvlib.bench.measure_in_subprocess`
measures one cache kind."""
import sys

from .process import main

sys.exit(main(sys.argv[1:]))
