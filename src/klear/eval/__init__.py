"""Evaluation: benchmark loading, avg@k / pass@k / maj@k with bootstrap intervals, reports.

The paper reports avg@k (avg@64 on AIME24/25 and HMMT25, avg@8 on LiveCodeBench)
sampled at temperature 0.6, top_p 0.95, with a 64K budget made possible by YaRN
(factor 2.5 over 32768 positions). The first three modules need no model and
no reward pool, so they can be tested in isolation:

- :mod:`klear.eval.benchmarks`: :class:`~klear.eval.benchmarks.Problem` records
  from the shared benchmark files, any jsonl/json/parquet file (field mapping or
  auto-detection); :mod:`klear.eval.code_benchmarks`: HumanEval and LiveCodeBench-style
  code files;
- :mod:`klear.eval.metrics`: per-sample correctness in, a
  :class:`~klear.eval.metrics.BenchmarkSummary` out (metric keys spelled with the
  actual k, each with a seeded bootstrap confidence interval over problems);
- :mod:`klear.eval.report`: the markdown table, next to the paper's numbers;
- :mod:`klear.eval.runner`: generate through a rollout backend, score through the
  reward pool, write ``samples.jsonl`` (resumable, :mod:`klear.eval.rundir`), ``summary.json``
  and ``report.md``. It works with whatever backend and pool the caller gives it (the RL
  trainer's own, or :func:`klear.eval.backend.load_backend`'s, YaRN applied);
- :mod:`klear.eval.generations`: re-score a generations file into the same outputs;
- :mod:`klear.cli.eval`: ``klear eval run`` and ``klear eval score``.

Submodules are imported explicitly; this package imports nothing on its own so
that ``import klear.eval.metrics`` stays cheap (no torch, no transformers).
"""
