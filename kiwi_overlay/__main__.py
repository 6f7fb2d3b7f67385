import sys

from kiwi_overlay.cli import main

sys.exit(main())
