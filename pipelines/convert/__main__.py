import sys

from pipelines.convert.cli import main

sys.exit(main())
