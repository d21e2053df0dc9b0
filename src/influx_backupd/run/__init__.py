"""One run: the policy's decision, the lock and crash recovery, the job, what follows it."""
