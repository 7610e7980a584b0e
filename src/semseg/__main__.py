"""``python -m semseg`` (also what ``torchrun -m semseg`` runs)."""

import sys

from semseg.cli import main

sys.exit(main())
