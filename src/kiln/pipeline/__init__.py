"""The pipeline: orchestration only. `build()` (build.py) runs the steps in order on a typed context
(context.py) and records the run as AIB reports it (recorder.py)."""
