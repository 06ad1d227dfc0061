import sys

from flantune.cli import main

sys.exit(main())
