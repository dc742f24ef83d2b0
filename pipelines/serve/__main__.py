import sys

from pipelines.serve.cli import main

sys.exit(main())
