import sys

from matsteer.app.cli import main

sys.exit(main())
