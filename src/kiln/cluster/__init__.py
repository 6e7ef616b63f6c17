"""Builds on many hosts: kiln's job engine (RQ on Redis) behind a small interface.

With `[cluster] queue = "redis://..."` in config.toml, `kiln build` and `kiln serve` enqueue
builds and `kiln worker` runs them, each in the same build a server's local executor starts
(`kiln.api.child`, through `python -m kiln.cluster.child`). The modules:

- `engine`: the interface (`JobEngine`) and the records it answers with; `BuildRequest`, the one
  job payload (an API template by id, or a template document as `kiln build` read it).
- `routing`: a worker's capabilities and the queues they make; a template's `kiln.requires`,
  `kiln.host` and `kiln.retries`.
- `connect`: opening Redis from the configured URL, with a user's error when it is unreachable.
- `state`: what the cluster remembers in Redis beyond RQ (workers and heartbeats, runs in flight,
  event streams, cancel requests) and the "worker lost" rule, with its one retry.
- `rq_engine`: `JobEngine` on RQ.
- `runner`: the job function a worker runs (child process, events to Redis, cancel, cleanup).
- `child`: the build process the runner starts (the API's child, plus a lost catalog as a clear error).
- `worker`: `kiln worker`'s loop (an RQ worker with kiln's heartbeat and scratch reclaim).
- `follow`: the submitter's side: a run's events from Redis to a monitor, as a local build shows them.
- `executor`: `RqExecutor`, the API server's `Executor` that enqueues to the workers.
"""
