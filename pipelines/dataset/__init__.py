"""The dataset builder: git repositories -> filtered, deduplicated, secret-free JSONL shards, kept up to date."""

import os

# The builder's numpy work is element-wise: without this, OpenBLAS starts a thread per core at import that spins
# (~0.1 s of CPU on two cores) while the builder starts up. Set before numpy is first imported (this package's
# modules import it).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
