import sys

from pipelines.dataset.cli import main

sys.exit(main())
