"""Collects criterion's medians (target/criterion/*/new/estimates.json) into the markdown table between
<!-- cpu-benches:begin --> and <!-- cpu-benches:end --> of a document, with the machine and the date."""
import datetime
import json
import os
import platform
import sys


def human(ns: float) -> str:
    for unit, scale in (("s", 1e9), ("ms", 1e6), ("µs", 1e3)):
        if ns >= scale:
            return f"{ns / scale:.3g} {unit}"
    return f"{ns:.3g} ns"


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main(criterion_dir: str, doc: str) -> None:
    rows = []
    for entry in sorted(os.listdir(criterion_dir)):
        new = os.path.join(criterion_dir, entry, "new")
        if not os.path.exists(os.path.join(new, "estimates.json")):
            continue
        with open(os.path.join(new, "benchmark.json")) as f:
            title = json.load(f)["title"]
        with open(os.path.join(new, "estimates.json")) as f:
            median = json.load(f)["median"]
        lo, hi = median["confidence_interval"]["lower_bound"], median["confidence_interval"]["upper_bound"]
        rows.append(f"| {title} | {human(median['point_estimate'])} | {human(lo)} .. {human(hi)} |")
    if not rows:
        sys.exit(f"no criterion results under {criterion_dir}")
    date = datetime.date.today().isoformat()
    table = "\n".join([
        f"Measured {date} on {cpu_model()} ({os.cpu_count()} cores), `scripts/bench/cpu.sh` "
        "(criterion medians, 95% confidence interval of the median).",
        "",
        "| bench | median | 95% CI |",
        "|---|---:|---:|",
        *rows,
    ])
    replace_block(doc, "cpu-benches", table)
    print(f"{len(rows)} benches written to {doc}")


def replace_block(doc: str, name: str, content: str) -> None:
    """Replaces what stands between `<!-- {name}:begin -->` and `<!-- {name}:end -->` in `doc`."""
    with open(doc) as f:
        text = f.read()
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    if begin not in text or end not in text:
        sys.exit(f"{doc} has no {begin} ... {end} section")
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    with open(doc, "w") as f:
        f.write(f"{head}{begin}\n{content}\n{end}{tail}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
