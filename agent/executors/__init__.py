"""Where training runs: this machine (:mod:`.local`) or a GPU box over SSH (:mod:`.ssh`)."""
