"""Rewrites the table between <!-- demo-serving:begin --> and <!-- demo-serving:end --> of a document from the
`glmv bench --output-file` records of scripts/bench/demo_serving.sh, with the machine, the date and its load."""
import datetime
import json
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
from criterion_table import cpu_model, replace_block  # noqa: E402


def main(records_path: str, doc: str, load_before: str, load_after: str) -> None:
    with open(records_path) as f:
        records = [json.loads(line) for line in f if line.strip()]
    if not records:
        sys.exit(f"no records in {records_path}")
    rows = [
        "| concurrency | prompts | ok/failed | duration s | input tok | output tok | output tok/s | total tok/s "
        "| TTFT mean / median / p99 ms | TPOT mean / median / p99 ms | ITL mean / median / p95 / p99 / max ms "
        "| E2E mean ms |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in records:
        def ms(metric, stats):
            return " / ".join(f"{r[f'{s}_{metric}_ms']:.1f}" for s in stats)
        rows.append(
            f"| {r['max_concurrency']} | {r['num_prompts']} | {r['completed']}/{r['failed']} | {r['duration']:.2f} "
            f"| {r['total_input_tokens']} | {r['total_output_tokens']} | {r['output_throughput']:.1f} "
            f"| {r['total_throughput']:.1f} | {ms('ttft', ['mean', 'median', 'p99'])} "
            f"| {ms('tpot', ['mean', 'median', 'p99'])} | {ms('itl', ['mean', 'median', 'p95', 'p99', 'max'])} "
            f"| {r['mean_e2e_latency_ms']:.0f} |"
        )
    date = datetime.date.today().isoformat()
    text = "\n".join([
        f"Measured {date} on {cpu_model()} ({os.cpu_count()} cores); load average (1 min) {load_before} before, "
        f"{load_after} after.",
        "",
        *rows,
    ])
    replace_block(doc, "demo-serving", text)


if __name__ == "__main__":
    main(*sys.argv[1:5])
