"""Where a fit runs: this process, a job started by a launcher or a cluster, or new ranks."""
