import sys

from ecdp.cli import main

sys.exit(main())
