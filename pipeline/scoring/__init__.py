"""Batch scoring: documents in, one prediction row per document out, nothing lost.

The package, in the order a job runs through it:

| module | what it does |
|---|---|
| `job.py` | the job: count the inputs, check the outputs, predict, write, summarise |
| `inputs.py` | the readers of `pipeline/readers.py` as a stream of record batches, with scoring's policy |
| `predictors.py` | in-process SavedModel, or a running TF Serving / `textserve serve` |
| `shards.py` | output paths, document → shard routing, atomic commits, what `--resume` trusts |
| `writers.py` | the row encoders (JSONL, CSV, TFRecord) and one shard file |
| `beam.py` | the same job as an Apache Beam pipeline (`--runner beam`) |
"""
