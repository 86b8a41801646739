"""``python -m evaluation --pred MASKS --gt LABELS [--csv FILE]``: see ``evaluation.evaluate``."""

import sys

from evaluation.evaluate import main

sys.exit(main())
