"""One module per ``mkv`` subcommand; shared argument helpers in :mod:`mkvlib.commands.common`."""
