"""`klear data filter-tests`, `filter-math` and `sft-select`: the paper's curation steps as commands
(sampling or reading responses, scoring through the reward pool, resumable shards, reports)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from klear.cli.data import check_outputs, located_rows, write_json
from klear.progress import progress

# ---------------------------------------------------------------------------------------------
# filter-tests / filter-math
# ---------------------------------------------------------------------------------------------


def _dir_fingerprint(path: str) -> list[Any]:
    """Names, sizes and mtimes of a model directory's files: new weights invalidate finished shards."""
    root = Path(path)
    if not root.is_dir():
        from klear.data.schema import DataError

        raise DataError(f"--model {path}: not a directory")
    return [
        [str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns]
        for p in sorted(root.rglob("*"))
        if p.is_file()
    ]


class _Lazy:
    """Build an expensive resource (reward pool, model) only when a shard actually needs it."""

    def __init__(self, make: Callable[[], Any]) -> None:
        self.make, self.value = make, None

    def get(self) -> Any:
        if self.value is None:
            self.value = self.make()
        return self.value


def run_filter(args: argparse.Namespace) -> int:
    from klear.config import load_reward_config
    from klear.data.filters import Summary, backend_generator, filter_shard, load_generations, prompt_key
    from klear.data.schema import DataError
    from klear.data.shards import (
        AtomicOutputs,
        ShardStats,
        default_work_dir,
        finish_work_dir,
        run_sharded,
        shard_seed,
    )

    mode = "code" if args.data_command == "filter-tests" else "math"
    check_outputs(args.kept, args.dropped, args.save_generations, inputs=[args.input], force=args.force)
    reward_cfg = load_reward_config(args.config, args.overrides)
    if mode == "code":  # judge every test; all-or-nothing stops at the first failure
        reward_cfg = reward_cfg.model_copy(
            update={"code": reward_cfg.code.model_copy(update={"max_tests": None, "mode": "hard"})}
        )
    rows = located_rows(args.input, "rl")
    generations = load_generations(args.generations) if args.generations else None
    k = args.k if args.k is not None else (None if generations is not None else 16)
    if k is not None and k < 1:
        raise DataError(f"--k {k}: must be >= 1")
    if generations is None:  # bad sampling settings fail now, not after the model has loaded
        from klear.rollout import SamplingParams

        try:
            SamplingParams(
                n=k or 1, temperature=args.temperature, top_p=args.top_p, max_new_tokens=args.max_new_tokens
            )
        except ValueError as exc:
            raise DataError(str(exc)) from None
        from klear.preflight import check_device, check_model_dir  # before any shard is written

        check_model_dir(args.model, "--model")
        check_device(args.device)
    source: Any = (
        ["generations"]  # each row's own responses are part of its shard key (key_of)
        if generations is not None
        else [
            "model",
            args.model,
            _dir_fingerprint(args.model),
            args.backend,
            args.temperature,
            args.top_p,
            args.max_new_tokens,
        ]
    )
    params = [
        "filter",
        mode,
        k,
        args.seed,
        args.threshold if mode == "code" else args.majority,
        getattr(args, "min_tests", None),
        reward_cfg.model_dump(mode="json"),
        source,
    ]

    def make_pool() -> Any:
        from klear.rewards.pool import RewardPool

        return RewardPool(reward_cfg)

    def make_generator() -> Any:
        from klear.rollout import backend_class

        kwargs: dict[str, Any] = {"seed": args.seed}
        if args.device:
            kwargs["device"] = args.device
        if args.batch_size:
            kwargs["max_batch_size"] = args.batch_size
        backend = backend_class(args.backend).from_pretrained(args.model, **kwargs)
        return backend_generator(backend, args.temperature, args.top_p, args.max_new_tokens)

    pool, gen = _Lazy(make_pool), _Lazy(make_generator)

    def process(chunk: list[tuple[str, Any]], index: int) -> Any:
        return filter_shard(
            chunk,
            mode=mode,
            score=lambda r, s: pool.get().score(r, s),
            seed=shard_seed(args.seed, index),
            generations=generations,
            generate=None if generations is not None else lambda p, n, sd: gen.get()(p, n, sd),
            k=k,
            threshold=getattr(args, "threshold", 0.5),
            min_tests=getattr(args, "min_tests", 16),
            majority=getattr(args, "majority", 0.5),
        )

    def key_of(item: tuple[str, Any]) -> Any:
        """A row's result depends on the row and its responses, not on its line number."""
        row = item[1].to_dict()
        return [row] if generations is None else [row, generations.get(prompt_key(item[1].prompt))]

    work = Path(args.work_dir) if args.work_dir else default_work_dir(args.kept)
    stats, summary = ShardStats(), Summary()
    try:
        with progress(not args.no_progress) as bar:
            task = bar.add_task(args.data_command, total=len(rows))
            outputs = {"kept": args.kept, "dropped": args.dropped, "generations": args.save_generations}
            with AtomicOutputs(outputs) as out:
                for routed in run_sharded(
                    rows,
                    process,
                    work_dir=work,
                    params=params,
                    shard_size=args.shard_size,
                    key_of=key_of,
                    progress=lambda n: bar.advance(task, n),
                    stats=stats,
                ):
                    for dest, record in routed:
                        summary.add(dest, record)
                    out.write_all(routed)
    finally:
        if pool.value is not None:
            pool.value.close()
    finish_work_dir(work, args.keep_work)
    report = {
        "command": args.data_command,
        "input": args.input,
        "kept_file": args.kept,
        "dropped_file": args.dropped,
        "settings": {
            "k": k,
            "seed": args.seed,
            "responses": "generations" if generations is not None else "model",
            **(
                {"threshold": args.threshold, "min_tests": args.min_tests}
                if mode == "code"
                else {"majority": args.majority}
            ),
        },
        **summary.to_dict(),
        "shards": {"total": stats.shards, "computed": stats.computed, "reused": stats.reused},
    }
    report_path = args.report or str(Path(args.kept).with_suffix(".report.json"))
    write_json(report_path, report)
    reasons = ", ".join(f"{r} {n}" for r, n in report["reasons"].items()) or "none"
    print(
        f"{args.data_command}: {report['prompts']} prompts: kept {report['kept']} -> {args.kept}, "
        f"dropped {report['dropped']} -> {args.dropped} ({reasons})\n"
        f"pass-rate histogram (tenths 0.0..1.0): {report['pass_rate_histogram_tenths']}\n"
        f"shards: {stats.computed} computed, {stats.reused} reused; report: {report_path}"
    )
    return 0


# ---------------------------------------------------------------------------------------------
# sft-select
# ---------------------------------------------------------------------------------------------


def run_sft_select(args: argparse.Namespace) -> int:
    from klear.data.schema import DataError, count_records, iter_rows
    from klear.data.sft_select import MinHasher, measure_quality, read_quality_file, row_features, select
    from klear.data.shards import (
        AtomicOutputs,
        ShardStats,
        default_work_dir,
        digest,
        finish_work_dir,
        run_sharded,
    )

    check_outputs(args.output, args.dropped, inputs=args.inputs, force=args.force)
    if args.top_k < 1 or args.per_prompt < 1:
        raise DataError("--top-k and --per-prompt must be >= 1")
    if not 0.0 < args.near_threshold <= 1.0:
        raise DataError(f"--near-threshold {args.near_threshold}: must be in (0, 1]")
    try:
        hasher = MinHasher(args.num_perm, args.bands, args.shingle, args.seed)
    except ValueError as exc:
        raise DataError(str(exc)) from None
    quality_file = read_quality_file(args.quality) if args.quality else None
    work = Path(args.work_dir) if args.work_dir else default_work_dir(args.output)

    def all_rows() -> Any:
        for path in args.inputs:
            for where, row in iter_rows(path, "sft"):
                yield f"{path}: {where}", row

    # 1. per-row features, in resumable shards
    stats = ShardStats()
    features: list[dict[str, Any]] = []
    params = [
        "sft-features",
        args.num_perm,
        args.bands,
        args.shingle,
        args.seed,
        args.easy_pass_rate,
        args.unknown_is_hard,
    ]
    total = sum(count_records(p) or 0 for p in args.inputs) or None
    with progress(not args.no_progress) as bar:
        task = bar.add_task("sft-select: features", total=total)
        for routed in run_sharded(
            all_rows(),
            lambda chunk, _i: [
                (
                    "features",
                    {
                        **row_features(row, hasher, args.easy_pass_rate, args.unknown_is_hard),
                        "row_digest": digest(row.to_dict())[:32],
                        "where": where,
                    },
                )
                for where, row in chunk
            ],
            work_dir=work / "features",
            params=params,
            shard_size=args.shard_size,
            key_of=lambda item: [item[0], item[1].to_dict()],
            progress=lambda n: bar.advance(task, n),
            stats=stats,
        ):
            features.extend({**f, "sig": hasher.compact(f["sig"])} for _, f in routed)
    if not features:
        raise DataError(f"{', '.join(args.inputs)}: no rows")

    # 2. source quality: given, or measured per source (cached: a measurement can be a training run)
    sources = sorted({f["source"] for f in features})
    if quality_file is not None:
        quality = quality_file
    else:
        quality = {}
        for source in sources:
            rows_digest = digest([f["row_digest"] for f in features if f["source"] == source])
            tag = digest(source)[:16]
            cache = work / "quality" / f"{tag}.json"
            key = digest([args.quality_command, source, rows_digest])
            try:
                cached = json.loads(cache.read_text())
                if cached.get("key") == key:
                    quality[source] = float(cached["score"])
                    continue
            except (OSError, ValueError, KeyError):
                pass
            rows_file = work / "quality" / f"{tag}.jsonl"
            from klear.io import write_atomic

            write_atomic(
                rows_file,
                (
                    json.dumps(r.to_dict(), ensure_ascii=False) + "\n"
                    for _, r in all_rows()
                    if (r.source if r.source is not None else "<none>") == source
                ),
            )
            quality[source] = measure_quality(args.quality_command, source, rows_file, args.quality_timeout)
            write_json(cache, {"key": key, "source": source, "score": quality[source]})

    # 3. decide every row
    sel = select(
        features, quality, args.top_k, hasher, args.near_threshold, args.per_prompt, not args.no_near
    )

    # 4. write: stream the inputs again, routing each row by its decision
    with progress(not args.no_progress) as bar:
        task = bar.add_task("sft-select: write", total=len(features))
        with AtomicOutputs({"kept": args.output, "dropped": args.dropped}) as out:
            for i, (_, row) in enumerate(all_rows()):
                reason = sel.reasons[i]
                if reason is None:
                    out.write("kept", row.to_dict())
                else:
                    info: dict[str, Any] = {"reason": reason}
                    if i in sel.duplicate_of:
                        rep, similarity = sel.duplicate_of[i]
                        info.update(duplicate_of=features[rep]["where"], similarity=round(similarity, 4))
                    out.write("dropped", {**row.to_dict(), "selection": info})
                bar.advance(task)
    finish_work_dir(work, args.keep_work)

    report = {
        "inputs": args.inputs,
        "output": args.output,
        "settings": {
            "top_k": args.top_k,
            "easy_pass_rate": args.easy_pass_rate,
            "unknown_is_hard": args.unknown_is_hard,
            "near_threshold": args.near_threshold,
            "near": not args.no_near,
            "per_prompt": args.per_prompt,
            "num_perm": args.num_perm,
            "bands": args.bands,
            "shingle": args.shingle,
            "seed": args.seed,
            "quality": args.quality or {"command": args.quality_command},
        },
        "rows": len(features),
        "kept": sum(r is None for r in sel.reasons),
        "reasons": {},
        "sources": [
            {
                "source": s,
                "quality": quality[s],
                "rank": rank + 1,
                "selected": s in sel.selected,
                **sel.per_source[s],
            }
            for rank, s in enumerate(sel.ranked)
        ],
        "shards": {"total": stats.shards, "computed": stats.computed, "reused": stats.reused},
    }
    for r in sel.reasons:
        if r is not None:
            report["reasons"][r] = report["reasons"].get(r, 0) + 1
    report_path = args.report or str(Path(args.output).with_suffix(".report.json"))
    write_json(report_path, report)
    _print_selection(report, report_path)
    return 0


def _print_selection(report: dict[str, Any], report_path: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="sft-select: sources by quality")
    for col in ("rank", "source", "quality", "selected", "rows", "kept", "dropped (why)"):
        table.add_column(col)
    fixed = {"source", "quality", "rank", "selected", "rows", "kept", "kept_unverified_or_wrong_hard"}
    for s in report["sources"]:
        why = ", ".join(f"{k} {v}" for k, v in s.items() if k not in fixed) or "-"
        table.add_row(
            str(s["rank"]),
            s["source"],
            f"{s['quality']:g}",
            "yes" if s["selected"] else "no",
            str(s["rows"]),
            str(s["kept"]),
            why,
        )
    console = Console(width=120)
    console.print(table)
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(report["reasons"].items())) or "none"
    console.print(f"kept {report['kept']} of {report['rows']} rows -> {report['output']}; dropped: {reasons}")
    console.print(f"report: {report_path}")
