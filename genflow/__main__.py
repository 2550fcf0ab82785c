import sys

from genflow.cli import main

sys.exit(main())
