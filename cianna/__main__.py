"""``python -m cianna`` runs the command line."""
import sys

from cianna.cli import main

sys.exit(main())
