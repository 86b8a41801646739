"""``python -m flare_nnsam``: the ``flare-nnsam`` command without its installed script."""

import sys

from flare_nnsam.cli import main

sys.exit(main())
