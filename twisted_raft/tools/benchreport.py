"""
The numbers and the output of a benchmark run, pure: percentiles, the
summary of one measured window, the text table, the JSON report and the
plot.  Shared by L{twisted_raft.tools.bench} and
L{twisted_raft.tools.pysyncobj_bench}, which measure the two systems.
"""

import math


def percentile(ordered, p):
    """
    The C{p}-th percentile (0 < p <= 100) of an ascending list, by the
    nearest-rank method: the smallest sample with at least p % of the
    samples at or below it.  C{None} for no samples.
    """
    if not ordered:
        return None
    rank = max(1, math.ceil(p / 100.0 * len(ordered) - 1e-9))
    return ordered[min(rank, len(ordered)) - 1]


def summarize(latencies, errors, duration):
    """
    The summary of one measured window.

    @param latencies: seconds, one per successful operation in the window.
    @return: a dict: C{ops}, C{errors}, C{ops_per_sec}, C{p50_ms},
        C{p99_ms}, C{p999_ms}, C{mean_ms}, C{max_ms} (latencies C{None}
        without samples).
    """
    ordered = sorted(latencies)

    def ms(x):
        return None if x is None else round(x * 1000.0, 3)

    return {
        "ops": len(ordered),
        "errors": errors,
        "ops_per_sec": round(len(ordered) / duration, 1) if duration > 0 else 0.0,
        "p50_ms": ms(percentile(ordered, 50)),
        "p99_ms": ms(percentile(ordered, 99)),
        "p999_ms": ms(percentile(ordered, 99.9)),
        "mean_ms": ms(sum(ordered) / len(ordered)) if ordered else None,
        "max_ms": ms(ordered[-1]) if ordered else None,
    }


TABLE_COLUMNS = [
    ("system", "system"), ("workload", "workload"), ("concurrency", "conc"),
    ("value_size", "value B"), ("ops_per_sec", "ops/s"), ("p50_ms", "p50 ms"),
    ("p99_ms", "p99 ms"), ("p999_ms", "p99.9 ms"), ("errors", "errors"),
]


def cell(value):
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.1f}" if value >= 100 else f"{value:.2f}"
    return str(value)


def formatTable(rows):
    """A text table of result dicts (missing fields show as C{-})."""
    table = [[title for _, title in TABLE_COLUMNS]]
    for row in rows:
        table.append([cell(row.get(key)) for key, _ in TABLE_COLUMNS])
    widths = [max(len(r[i]) for r in table) for i in range(len(TABLE_COLUMNS))]
    lines = []
    for n, r in enumerate(table):
        cells = [c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))]
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines) + "\n"


def ratioLine(raftkv, other, name="PySyncObj"):
    """C{"raftkv/PySyncObj ops/s: 0.12 (1234 / 10000)"}, or C{None}."""
    a, b = raftkv.get("ops_per_sec"), other.get("ops_per_sec")
    if not b:
        return None
    return f"raftkv/{name} ops/s: {a / b:.3f} ({a:.0f} / {b:.0f})"


def report(config, results, comparison=None):
    """The JSON-able report of a whole invocation."""
    out = {"config": config, "results": results}
    if comparison is not None:
        out["pysyncobj"] = comparison
        best = max(results, key=lambda r: r["ops_per_sec"])
        if comparison.get("ops_per_sec"):
            out["ratio_ops_per_sec"] = round(best["ops_per_sec"] / comparison["ops_per_sec"], 4)
    return out


def plot(results, path):
    """Throughput and p99 latency against concurrency, into a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [r["concurrency"] for r in results]
    fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(6.4, 6.4))
    top.plot(xs, [r["ops_per_sec"] for r in results], marker="o")
    top.set_ylabel("ops/s")
    top.set_title(f"raftkv {results[0]['workload']}, {results[0]['value_size']} B values")
    top.grid(True, alpha=0.3)
    bottom.plot(xs, [r["p99_ms"] or 0 for r in results], marker="o", color="tab:red", label="p99")
    bottom.plot(xs, [r["p50_ms"] or 0 for r in results], marker=".", color="tab:gray", label="p50")
    bottom.set_ylabel("latency (ms)")
    bottom.set_xlabel("concurrency (requests in flight)")
    bottom.legend()
    bottom.grid(True, alpha=0.3)
    if len(xs) > 1 and max(xs) / min(xs) >= 8:
        bottom.set_xscale("log", base=2)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
