"""``python -m marionet …``: the ``marionet`` command without an installed script
(e.g. ``ip netns exec NS python -m marionet trace …``)."""

import sys

from marionet.cli import main

sys.exit(main())
