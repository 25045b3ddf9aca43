"""Background work: the job queue shared by the cluster, its schedules, and the worker process."""
