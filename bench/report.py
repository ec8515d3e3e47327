"""Turn the benchmark's JSON results into the tables in docs/PERFORMANCE.md and a throughput plot.

    python -m bench.report [--results bench/results] [--doc docs/PERFORMANCE.md]

Rewrites the part of the document between ``<!-- bench:begin -->`` and ``<!-- bench:end -->`` and writes
``bench/results/throughput.png``. Nothing else in the document is touched.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

from bench.backup import table as backup_table

BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"
LABELS = {
    "ferry": "Ferry",
    "restic": "restic",
    "casync": "casync",
    "fetch": "ceiling: fetch only",
    "memory": "ceiling: from memory",
}
WORKLOADS = {"block": "4 GiB block image", "tree": "tree of small + large files", "file": "one 4 GiB file"}


def _mb(x: float) -> str:
    return f"{x:.0f}"


def _gbps(d: dict[str, Any]) -> str:
    lo, hi = d["GBps_spread"]
    return f"**{d['GBps']:.3f}** ({lo:.3f}–{hi:.3f})"


def restore_tables(r: dict[str, Any]) -> list[str]:
    m = r["machine"]
    lines = [
        f"Command: `{r.get('command', 'python -m bench')}` ({r['runs']} runs; medians, spread min–max of GB/s).",
        f"Machine: {m['cpu']}, {m['cpus']} CPUs, {m['memory_GiB']} GiB, Linux {m['kernel']}, Python {m['python']}, "
        f"{m.get('restic', 'restic ?')}, {m.get('casync', 'casync ?')}.",
        "",
    ]
    for name, w in r["workloads"].items():
        lines += [
            f"#### {WORKLOADS.get(name, name)} ({w['bytes'] / 1e9:.2f} GB restored)",
            "",
            "| tool | wall s | GB/s (spread) | + sync s | written out: GB/s | CPU s/GB | peak RSS MiB | "
            "timed part: GB/s | CPU s/GB |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for tool, d in w["tools"].items():
            p, durable = d["process"], d["durable"]
            inner = d.get("inner")
            tail = f"{inner['GBps']:.3f} | {inner['cpu_s_per_GB']:.2f}" if inner else "– | –"
            lines.append(
                f"| {LABELS.get(tool, tool)} | {p['wall_s']:.2f} | {_gbps(p)} | "
                f"{durable['wall_s'] - p['wall_s']:.2f} | {durable['GBps']:.3f} | {p['cpu_s_per_GB']:.2f} | "
                f"{_mb(p['peak_rss_MiB'])} | {tail} |"
            )
        ra = w["ratios"]
        parts = [
            f"Ferry ÷ {peer}: **{ra[f'ferry_vs_{peer}']:.1f}×** (written out: {ra[f'ferry_vs_{peer}_durable']:.1f}×)"
            for peer in ("restic", "casync")
            if f"ferry_vs_{peer}" in ra
        ]
        parts += [
            f"Ferry ÷ lower ceiling: **{ra['ferry_vs_lower_ceiling']:.0%}**",
            f"CPU per GB ÷ from-memory: **{ra['cpu_per_GB_vs_memory']:.2f}×**",
        ]
        lines += ["", "; ".join(parts) + ".", ""]
    rss = r.get("rss_by_volume_size")
    if rss:
        lines += [
            f"Ferry's peak RSS: {rss['small_peak_rss_MiB']:.0f} MiB restoring {rss['small_bytes'] / 2**30:.0f} GiB, "
            f"{rss['large_peak_rss_MiB']:.0f} MiB restoring {rss['large_bytes'] / 2**30:.0f} GiB "
            f"({rss['growth']:+.0%}).",
            "",
        ]
    if r.get("backup"):
        lines += [
            "Snapshot creation is measured by `bench.backup`, against restic, first and incremental, with the "
            'agent\'s DataUpload path: see "Snapshot creation" below.',
            "",
        ]
    return lines


def plot(r: dict[str, Any], path: Path) -> None:
    import matplotlib  # noqa: PLC0415 - only the report needs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    names = list(r["workloads"])
    tools = [t for t in LABELS if any(t in r["workloads"][n]["tools"] for n in names)]
    fig, ax = plt.subplots(figsize=(9, 4.5), dpi=110)
    width = 0.8 / len(tools)
    for i, tool in enumerate(tools):
        xs, ys, lo, hi = [], [], [], []
        for j, n in enumerate(names):
            d = r["workloads"][n]["tools"].get(tool)
            if d is None:
                continue
            p = d["inner"] if tool in ("fetch", "memory") else d["process"]
            xs.append(j + (i - (len(tools) - 1) / 2) * width)
            ys.append(p["GBps"])
            lo.append(p["GBps"] - p["GBps_spread"][0])
            hi.append(p["GBps_spread"][1] - p["GBps"])
        hatch = "//" if tool in ("fetch", "memory") else None
        ax.bar(xs, ys, width, yerr=[lo, hi], capsize=3, label=LABELS[tool], hatch=hatch)
    ax.set_xticks(range(len(names)), [WORKLOADS.get(n, n) for n in names])
    ax.set_ylabel("GB/s of restored data (median, min–max)")
    m = r["machine"]
    ax.set_title(f"Restore from SeaweedFS on 127.0.0.1, {m['cpus']} CPUs ({r['runs']} runs)")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def planning_table(p: dict[str, Any]) -> list[str]:
    lines = [
        f"Command: `{p.get('command', 'python -m bench.planning')}`; each manifest decoded and planned in a fresh "
        "process; medians. Baseline: the process's RSS after imports, before the manifest.",
        "",
        "| manifest | chunks | stored MiB | decode s | plan s | decode + plan s | walk s | peak RSS MiB | "
        "over baseline MiB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for mode in ("block", "filesystem"):
        for label, row in p.get(mode, {}).items():
            lines.append(
                f"| {mode} {label} | {row['chunks']:,} | {row['stored_manifest_MiB']:.1f} | {row['decode_s']:.2f} | "
                f"{row['plan_s']:.2f} | **{row['decode_plan_s']:.2f}** | {row['walk_s']:.2f} | "
                f"**{row['peak_rss_MiB']:.0f}** | {row['increase_MiB']:.0f} |"
            )
    return [*lines, ""]


def first_byte_table(f: dict[str, Any]) -> list[str]:
    lines = [
        f"Command: `python -m bench.first_byte` ({f['runs']} runs; {f['workload']}; the agent idle and the volume "
        "ready before each DataDownload is created; the target is watched every millisecond by a separate "
        "process).",
        "",
        "| from the DataDownload's creation to | median ms | min ms | max ms |",
        "|---|---|---|---|",
    ]
    for key, label in (
        ("in_progress_ms", "InProgress"),
        ("first_byte_ms", "**first restored byte**"),
        ("completed_ms", "Completed"),
    ):
        d = f[key]
        lines.append(f"| {label} | {d['median']:.0f} | {d['min']:.0f} | {d['max']:.0f} |")
    lines += ["", "Where the time goes (medians, ms):", ""]
    lines += [f"- {what}: {ms:.1f}" for what, ms in f.get("breakdown_median_ms", {}).items()]
    return [*lines, ""]


def velero_flow_table(v: dict[str, Any]) -> list[str]:
    velero, in_place = v["medians"]["velero"], v["medians"]["in place"]
    runs = len(v["runs"]["velero"])

    def ms(x: float) -> str:
        return f"{x * 1000:.0f}"

    marks = ("Accepted", "Prepared", "InProgress", "data restored", "Completed")
    return [
        f"Command: `python -m bench.velero_flow` ({runs} runs; one {v['size_mib']} MiB file of mixed data; one "
        f"agent, in process, with the DaemonSet's defaults, FERRY_VOLUME_POLL_INTERVAL {v['poll_s']:g} s; the "
        "tests' simulated cluster, whose provisioner, binder, scheduler and kubelet act within milliseconds of "
        'each write). "velero": the DataDownload, then the Pending PVC with Velero\'s selector and the '
        "application's pod, a WaitForFirstConsumer class; the clock stops at Completed with the PVC Bound. "
        '"in place": the volume already bound and mounted, a `ferry.inPlace` DataDownload.',
        "",
        "| median ms from the DataDownload's creation to | " + " | ".join(marks) + " |",
        "|---|" + "---|" * len(marks),
        "| velero (expose, restore, hand over) | " + " | ".join(ms(velero[m]) for m in marks) + " |",
        "| in place | " + " | ".join(ms(in_place[m]) if m in in_place else "—" for m in marks) + " |",
        "",
        f"Exposing (a restore PVC and pod, until Prepared) costs {ms(velero['Prepared'] - in_place['Prepared'])} ms "
        "more than finding a mounted volume, and handing the volume over (record it, Retain, delete the restore "
        "pod and PVC, name the PV on the PVC, claimRef, wait for Bound, the policy back) "
        f"{ms(velero['Completed'] - velero['data restored'])} ms: Ferry's own API round trips. On a real cluster the "
        "provisioner, the scheduler, the kubelet's mount and the restore pod's graceful deletion take their own "
        "time, and the agent notices each of those changes within FERRY_VOLUME_POLL_INTERVAL (2 s): each wait "
        "for the cluster costs up to that much more.",
        "",
    ]


def knobs_table(k: dict[str, Any]) -> list[str]:
    lines = [
        f"Command: `{k.get('command', 'python -m bench.knobs')}`: a {k['image_bytes'] / 2**30:.0f} GiB mixed block "
        f"image, {k['runs']} runs of each configuration, medians.",
        "",
        "| configuration | flags | GB/s (spread) | CPU s/GB | peak RSS MiB |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {name} | `{' '.join(row['args']) or '(none)'}` | {_gbps(row)} | {row['cpu_s_per_GB']:.2f} | "
        f"{row['peak_rss_MiB']:.0f} |"
        for name, row in k["configs"].items()
    ]
    return [*lines, ""]


def profile_table(paths: list[Path]) -> list[str]:
    runs = [json.loads(p.read_text()) for p in paths]
    stages = sorted({s for r in runs for s in r["stages"]}, key=lambda s: -max(r["stages"].get(s, 0) for r in runs))
    lines = [
        "Commands: "
        + "; ".join(f"`{r.get('command', 'python -m bench.profile --workload ' + r['workload'])}`" for r in runs)
        + " (250 samples/s of every thread that is not idle; a thread blocked in an O_DIRECT write counts, so "
        'this is time, not CPU; "thread hand-off" is mostly executor threads in their queue between calls, '
        "the threads receiving pack ranges among them. CPU by kind of thread: the stages table).",
        "",
        "| stage | " + " | ".join(f"{r['workload']} ({r['samples']} samples)" for r in runs) + " |",
        "|---|" + "---|" * len(runs),
    ]
    lines += [f"| {s} | " + " | ".join(f"{r['stages'].get(s, 0):.0%}" for r in runs) + " |" for s in stages]
    return [*lines, ""]


def stages_table(r: dict[str, Any]) -> list[str]:
    """CPU per restored GB by stage (``bench.stages``)."""
    alone, threads = r["stages_alone_cpu_s_per_GB"], r["restore_threads_cpu_s_per_GB"]
    names = {"ferry-get": "receiving pack ranges (threads)", "MainThread": "the event loop's thread"}
    lines = [
        f"Command: `{r.get('command', 'python -m bench.stages')}` ({r['runs']} runs, medians; "
        f"{r['restored_GB']:.2f} GB restored, encrypted repository). CPU seconds per restored GB.",
        "",
        "| each stage alone, one thread | CPU-s/GB | the restore's threads, by kind | CPU-s/GB |",
        "|---|---|---|---|",
    ]
    left = [(f"{k} (AES-256-GCM)" if k == "open" else k, v) for k, v in alone.items()]
    right = [(names.get(k, k), v) for k, v in threads.items()] + [("whole restore", r["restore_cpu_s_per_GB"])]
    for i in range(max(len(left), len(right))):
        a = left[i] if i < len(left) else ("", None)
        b = right[i] if i < len(right) else ("", None)
        lines.append(
            f"| {a[0]} | {'' if a[1] is None else f'{a[1]:.2f}'} | {b[0]} | {'' if b[1] is None else f'{b[1]:.2f}'} |"
        )
    return [*lines, ""]


_LINK_TOOLS = {
    "ferry": "Ferry (defaults)",
    "restic": "restic",
    "one-get": "one 4 MiB GET at a time",
    "fetch": "fetch ceiling (32 in flight)",
    "tar": "tar -xf (local archive)",
}


def link_table(r: dict[str, Any]) -> list[str]:
    """Restores over loopback and the S3-like links (``bench.link``), one table per workload."""
    m = r["machine"]
    lines = [
        f"Command: `{r.get('command', 'python -m bench.link')}` ({r['runs']} runs; medians, spread min–max of GB/s). "
        f"Machine: {m.get('cpu', '?')}, {m.get('cpus', '?')} CPUs. Ferry and restic: whole processes (start-up "
        "included); one-GET and fetch: the timed part (receiving only, nothing decoded or written); tar: "
        "the whole process, from a local archive.",
        "",
    ]
    conditions = r["conditions"]
    names = list(next(iter(conditions.values()))["workloads"])
    for wname in names:
        size = next(iter(conditions.values()))["workloads"][wname]["bytes"]
        present = [t for t in _LINK_TOOLS if t in next(iter(conditions.values()))["workloads"][wname]["tools"]]
        lines += [
            f"**{wname}** ({size / 1e9:.2f} GB restored)",
            "",
            "| link | " + " | ".join(_LINK_TOOLS[t] for t in present) + " | Ferry ÷ restic | Ferry ÷ one GET | "
            "Ferry ÷ fetch ceiling | CPU/GB Ferry ÷ restic | Ferry peak RSS MiB |",
            "|---|" + "---|" * (len(present) + 5),
        ]
        for cname, c in conditions.items():
            w = c["workloads"][wname]
            cells = []
            for tool in present:
                d = w["tools"][tool]
                d = d["process"] if tool in ("ferry", "restic", "tar") else d["inner"]
                cells.append(f"{d['GBps']:.3f} ({d['cpu_s_per_GB']:.2f} CPU-s/GB)")
            q = w["ratios"]
            lines.append(
                f"| {cname} | " + " | ".join(cells) + f" | **{q['ferry_vs_restic']:.2f}×** | "
                f"**{q['ferry_vs_one_get']:.1f}×** | **{q['ferry_vs_fetch_ceiling']:.0%}** | "
                f"**{q['cpu_per_GB_vs_restic']:.2f}×** | {q['ferry_peak_rss_MiB']:.0f} |"
            )
        lines.append("")
    return lines


def resume_table(r: dict[str, Any]) -> list[str]:
    """Killed restores run again (``bench.resume``)."""
    lines = [
        f"Command: `{r.get('command', 'python -m bench.resume')}`: `ferry restore` killed (SIGKILL) once it had "
        "received a random share of the data, then run again. Fetched twice: what both runs received beyond "
        "what one uninterrupted restore receives.",
        "",
        "| target | kills | whole restore MiB | fetched twice, median (max) share of the whole | fetched twice, "
        "median (max) share of what the killed run had left |",
        "|---|---|---|---|---|",
    ]
    for kind, t in r["targets"].items():
        rows = t["kills"]
        whole = [x["refetched_share_of_whole"] for x in rows]
        left = [x["refetched_share_of_left"] for x in rows if x["first_bytes"] < t["whole_bytes"]]
        lines.append(
            f"| {kind} | {len(rows)} | {t['whole_bytes'] / 2**20:.0f} | {statistics.median(whole):.1%} "
            f"({max(whole):.1%}) | {statistics.median(left):.1%} ({max(left):.1%}) |"
        )
    return [*lines, ""]


def hostile_table(h: dict[str, Any]) -> list[str]:
    lines = [
        "Command: `python -m bench.hostile`; each stored manifest decoded in a fresh process; peak RSS is the "
        "process's own (VmHWM), imports included. The limit is the manifest memory limit the case ran under.",
        "",
        "| manifest | stored bytes | outcome | seconds | peak RSS MiB |",
        "|---|---|---|---|---|",
    ]
    for name, row in h.items():
        outcome = str(row["outcome"]).replace("|", "/")
        lines.append(
            f"| {name} | {row['stored_bytes']:,} | {outcome} | {row['seconds']:.2f} | **{row['peak_rss_MiB']:.0f}** |"
        )
    return [*lines, ""]


def render(results: Path) -> list[str]:
    lines: list[str] = []
    restore = results / "restore.json"
    if restore.exists():
        r = json.loads(restore.read_text())
        lines += ["### Restore throughput", "", "![throughput](../bench/results/throughput.png)", ""]
        lines += restore_tables(r)
        plot(r, results / "throughput.png")
    link = results / "link.json"
    if link.exists():
        lines += ["### Restores over an S3-like link", "", *link_table(json.loads(link.read_text()))]
    resume = results / "resume.json"
    if resume.exists():
        lines += ["### Resuming killed restores", "", *resume_table(json.loads(resume.read_text()))]
    backup = results / "backup.json"
    if backup.exists():
        lines += ["### Snapshot creation", "", *backup_table(json.loads(backup.read_text()))]
    first = results / "first-byte.json"
    if first.exists():
        lines += [
            "### Agent: DataDownload to first restored byte",
            "",
            *first_byte_table(json.loads(first.read_text())),
        ]
    flow = results / "velero-flow.json"
    if flow.exists():
        lines += [
            "### Agent: Velero's restore flow around the data",
            "",
            *velero_flow_table(json.loads(flow.read_text())),
        ]
    profiles = sorted(results.glob("profile-*.json"))
    if profiles:
        lines += ["### Where a restore's threads spend their time (py-spy)", "", *profile_table(profiles)]
    stages = results / "stages.json"
    if stages.exists():
        lines += ["### CPU per restored GB, by stage", "", *stages_table(json.loads(stages.read_text()))]
    knobs = results / "knobs.json"
    if knobs.exists():
        lines += ["### Tuning knobs (one changed at a time)", "", *knobs_table(json.loads(knobs.read_text()))]
    planning = results / "planning.json"
    if planning.exists():
        lines += ["### Planning large snapshots", "", *planning_table(json.loads(planning.read_text()))]
    hostile = results / "hostile.json"
    if hostile.exists():
        lines += ["### Hostile manifests", "", *hostile_table(json.loads(hostile.read_text()))]
    return lines


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--results", type=Path, default=Path(__file__).parent / "results")
    p.add_argument("--doc", type=Path, default=Path(__file__).parent.parent / "docs" / "PERFORMANCE.md")
    args = p.parse_args()
    text = args.doc.read_text()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{args.doc} has no {BEGIN} … {END} section")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    body = "\n".join(render(args.results))
    args.doc.write_text(f"{head}{BEGIN}\n{body}\n{END}{tail}")
    print(f"updated {args.doc}")


if __name__ == "__main__":
    main()
