"""``python -m mkvlib.offline pack|unpack``: the bundle's command line without an installed ``mkv``."""
import sys

from .cli import main

sys.exit(main())
