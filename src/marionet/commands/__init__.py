"""``marionet ping | trace | tracelb | dns | http | udpprobe | sniff | tbit``:
every primitive from the shell.

Modules, one job each: ``common`` (shared options, VP selection),
``output`` (text / JSON lines / results file / progress bar), ``run``
(placements and exit status), ``subcommands`` (each primitive's options,
named as scamper's ``do_*`` parameters). The text formatters are the
results' own ``to_text()`` (``marionet.results.text``).
"""

from .subcommands import COMMANDS, add_measure_parsers

__all__ = ["COMMANDS", "add_measure_parsers"]
