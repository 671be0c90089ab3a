#!/usr/bin/env python3
"""Turn one `benches/load/compare` run into docs/BENCHMARKS.md (tables) and an SVG latency chart.

Reads, per proxy, topology and round: <name>.r<N>.s<K>.csv (oha's every request of slice K of
the fixed-rate run, coordinated-omission corrected; older runs: one <name>.r<N>.oha.json),
<name>.r<N>.wrk.txt (closed-loop throughput) and
<name>.r<N>.meta.json (CPU time during the fixed-rate run, peak RSS, the 1 GiB streaming
result). Every number reported is the median over the rounds, except that the 1 GiB check
reports the largest peak RSS and the worst transfer (fewest bytes) of any round.
"""
import argparse
import glob
import json
import math
import statistics
import os
import platform
import random
import re
import subprocess
import sys

TICKS = os.sysconf("SC_CLK_TCK")
CONNS = 16  # the load generators' connections; main() sets it from --conns
PROXIES = ["direct", "tracseq", "tracseqstd", "nginx", "haproxy"]
LABEL = {"direct": "direct (no proxy)", "tracseq": "tracseq-proxy", "tracseqstd": "tracseq-proxy, no PGO",
         "nginx": "nginx", "haproxy": "HAProxy"}
SHORT = dict(LABEL, tracseqstd="tracseq, no PGO")


def load(out, name, rate=None, duration=None):
    """The median over the rounds of `name` (a single-round run of an older layout works too)."""
    bases = sorted(glob.glob(os.path.join(out, name + ".r*.meta.json")))
    bases = [b[:-len(".meta.json")] for b in bases]
    if not bases and os.path.exists(os.path.join(out, name + ".meta.json")):
        bases = [os.path.join(out, name)]
    rounds = [r for r in (load_round(b, rate, duration) for b in bases) if r]
    rounds.sort(key=lambda r: r["round"])
    if not rounds:
        return None
    merged = dict(rounds[0])
    for key in ("p50", "p99", "p999", "rps", "cpu_per_1k", "rss_mib", "requests"):
        merged[key] = statistics.median(r[key] for r in rounds)
    merged["rss_each_max_mib"] = max(r["rss_each_max_mib"] for r in rounds)
    if all("user_per_1k" in r for r in rounds):
        for key in ("user_per_1k", "kernel_per_1k"):
            merged[key] = statistics.median(r[key] for r in rounds)
    big = [r for r in rounds if "big_mbps" in r]
    if big:
        # Throughput is a median like the rest; what the 32 MiB target and the byte count judge
        # is the worst round, so one bad transfer is not hidden by two good ones.
        merged["big_mbps"] = statistics.median(r["big_mbps"] for r in big)
        merged["big_rss_mib"] = max(r["big_rss_mib"] for r in big)
        worst = min(big, key=lambda r: (r["big_bytes"], r["big_status"] == "200"))
        merged["big_bytes"], merged["big_status"] = worst["big_bytes"], worst["big_status"]
    merged["rounds"] = {r["round"]: r for r in rounds}
    return merged


def percentile(sorted_values, q):
    """Nearest-rank percentile (q in 0..1) of an ascending list."""
    if not sorted_values:
        return 0.0
    rank = min(max(math.ceil(q * len(sorted_values)), 1), len(sorted_values))
    return sorted_values[rank - 1]


def load_slices(paths):
    """Latency of one round from oha's per-request csv, merged over the round's slices.

    A request whose `DNS+dialup` is non-zero opened one of the client's connections (16 per
    slice): its time is the TCP handshake with the proxy, not the keep-alive path this column
    measures, so it is left out of the percentiles; it still counts as a request (its CPU was
    spent)."""
    import csv
    kept, total = [], 0
    for path in paths:
        dialed = 0
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                total += 1
                if float(row["DNS+dialup"]) == 0:
                    kept.append(float(row["request-duration"]) * 1e6)
                else:
                    dialed += 1
        if dialed > CONNS:
            # More connections than the client keeps open: some were closed and reopened.
            print(f"report: {path}: {dialed} requests opened a connection (client keeps {CONNS})",
                  file=sys.stderr)
    if not total:
        raise ValueError("no requests in " + ", ".join(paths))
    kept.sort()
    return {"p50": percentile(kept, 0.50), "p99": percentile(kept, 0.99), "p999": percentile(kept, 0.999),
            "requests": total}


def load_round(base, rate=None, duration=None):
    m = re.search(r"\.r(\d+)$", base)
    r = {"round": int(m.group(1)) if m else 1}
    slices = sorted(glob.glob(base + ".s*.csv"))
    try:
        if slices:
            r.update(load_slices(slices))
            # oha's csv holds the successful requests only: a proxy that failed requests shows
            # as one that served fewer than the rate asked for.
            if rate and duration and r["requests"] < 0.99 * rate * duration:
                print(f"report: {base}: {r['requests']} requests served, {rate * duration:.0f} asked for",
                      file=sys.stderr)
        else:
            # Runs before the slices: one oha json per round.
            with open(base + ".oha.json") as f:
                oha = json.load(f)
            pct = oha.get("latencyPercentiles", {})
            r["p50"] = pct.get("p50", 0) * 1e6
            r["p99"] = pct.get("p99", 0) * 1e6
            r["p999"] = pct.get("p99.9", 0) * 1e6
            r["requests"] = sum(oha.get("statusCodeDistribution", {}).values())
    except (OSError, ValueError, KeyError, TypeError) as e:
        print(f"report: round {base} left out: {e}", file=sys.stderr)
        return None
    try:
        with open(base + ".wrk.txt") as f:
            m = re.search(r"Requests/sec:\s+([\d.]+)", f.read())
            r["rps"] = float(m.group(1)) if m else 0.0
    except OSError:
        r["rps"] = 0.0
    with open(base + ".meta.json") as f:
        meta = json.load(f)
    r["slices"] = meta.get("slices", 0)
    cpu_s = meta["cpu_ns"] / 1e9 if "cpu_ns" in meta else meta["cpu_ticks"] / TICKS
    r["cpu_per_1k"] = cpu_s / max(r["requests"], 1) * 1000
    # The user/kernel split of that time, as the kernel's tick samples apportion it (runs
    # before the split was recorded have none).
    if meta.get("cpu_ticks") and "cpu_user_ticks" in meta:
        share = meta["cpu_user_ticks"] / meta["cpu_ticks"]
        r["user_per_1k"] = r["cpu_per_1k"] * share
        r["kernel_per_1k"] = r["cpu_per_1k"] * (1 - share)
    r["rss_mib"] = meta["peak_rss_kb"] / 1024
    big = meta.get("big", "").split()
    if len(big) == 3:
        r["big_mbps"] = float(big[0]) / 1e6
        r["big_bytes"] = int(float(big[1]))
        r["big_status"] = big[2]
        r["big_rss_mib"] = meta["big_peak_rss_kb"] / 1024
    each = [int(x) for x in meta.get("peak_rss_kb_each", "").split()]
    r["rss_each_max_mib"] = max(each) / 1024 if each else 0.0
    return r


def machine():
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    def ver(cmd):
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=5).stdout.strip() or \
                subprocess.run(cmd, capture_output=True, text=True, timeout=5).stderr.strip()
        except (OSError, subprocess.SubprocessError):
            return "?"
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "nginx": ver(["nginx", "-v"]).splitlines()[0] if ver(["nginx", "-v"]) else "?",
        "haproxy": (ver(["haproxy", "-v"]).splitlines() or ["?"])[0],
    }


def svg_chart(results, path):
    """Grouped bars: p50 / p99 / p99.9 latency per proxy, one panel per topology. Log scale:
    p99.9 tails are tens of times the medians, which a linear scale flattens to nothing."""
    import math
    panels = [t for t in ("plain", "mesh") if any((p, t) in results for p in PROXIES)]
    W, H, pad = 900, 320 * len(panels), 60
    colors = {"p50": "#4c78a8", "p99": "#f58518", "p999": "#e45756"}
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">',
           f'<rect width="{W}" height="{H}" fill="white"/>']
    for i, topo in enumerate(panels):
        y0 = i * 320
        rows = [(p, results[(p, topo)]) for p in PROXIES if (p, topo) in results]
        vmax = max(max(r["p999"], r["p99"], r["p50"]) for _, r in rows) or 1
        lo, hi = math.log10(50), math.log10(max(vmax, 100))
        title = "one hop: client → proxy → upstream" if topo == "plain" else \
            "mesh hop: client → proxy → mTLS 1.3 → proxy → upstream"
        out.append(f'<text x="{pad}" y="{y0 + 25}" font-size="15" font-weight="bold">{title}</text>')
        out.append(f'<text x="{pad}" y="{y0 + 45}">latency at a fixed rate, µs (log scale; lower is better)</text>')
        base, height = y0 + 280, 220
        gw = (W - 2 * pad) / max(len(rows), 1)
        for j, (p, r) in enumerate(rows):
            gx = pad + j * gw
            for k, key in enumerate(("p50", "p99", "p999")):
                h = max(0.0, (math.log10(max(r[key], 1)) - lo) / (hi - lo)) * height
                x = gx + 15 + k * (gw - 30) / 3
                w = (gw - 30) / 3 - 6
                out.append(f'<rect x="{x:.1f}" y="{base - h:.1f}" width="{w:.1f}" height="{h:.1f}" fill="{colors[key]}"/>')
                out.append(f'<text x="{x + w / 2:.1f}" y="{base - h - 4:.1f}" text-anchor="middle">{r[key]:.0f}</text>')
            out.append(f'<text x="{gx + gw / 2:.1f}" y="{base + 18}" text-anchor="middle" font-weight="bold">{SHORT[p]}</text>')
        out.append(f'<line x1="{pad}" y1="{base}" x2="{W - pad}" y2="{base}" stroke="black"/>')
    lx = W - 230
    for k, (key, name) in enumerate((("p50", "p50"), ("p99", "p99"), ("p999", "p99.9"))):
        out.append(f'<rect x="{lx + k * 70}" y="40" width="12" height="12" fill="{colors[key]}"/><text x="{lx + k * 70 + 16}" y="51">{name}</text>')
    out.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")


def cpu_split(results):
    """Mesh CPU per 1,000 requests, split into user space and kernel (medians over the rounds,
    each part on its own: they need not add up to the total's median exactly)."""
    rows = [(p, results[(p, "mesh")]) for p in PROXIES
            if (p, "mesh") in results and "user_per_1k" in results[(p, "mesh")]]
    if not rows:
        return []
    out = ["## Where the mesh hop's CPU goes", "",
           "| proxy | CPU s / 1k req | user space | kernel | user share |", "|---|---:|---:|---:|---:|"]
    for p, r in rows:
        share = r["user_per_1k"] / max(r["user_per_1k"] + r["kernel_per_1k"], 1e-12)
        out.append(f"| {LABEL[p]} | {r['cpu_per_1k']:.3f} | {r['user_per_1k']:.3f} | {r['kernel_per_1k']:.3f} | "
                   f"{share:.0%} |")
    return out + ["",
                  "The split is the kernel's own (`utime` and `stime` of `/proc/<pid>/stat`, which add up to the",
                  "exact on-CPU time and divide it by where the scheduler tick's samples landed). A tick that is due",
                  "while the kernel runs with interrupts off is taken when they come back on, often on the way",
                  "back to user space: the user share leans high for every proxy alike. Kernel time is the",
                  "system calls, the TCP/IP path of every loopback segment and the sleeps and wake-ups between",
                  "them.", ""]


RESAMPLES = 2000


def resampled_share(proxies, key, holds):
    """The share of resamples of the run's rounds in which a target holds.

    A resample draws as many rounds as the proxies have in common, with replacement, and takes
    the same rounds for every proxy (they ran side by side in each round); `holds` gets each
    proxy's median of `key` over the drawn rounds, in the order given. Near 1 (or 0), the
    rounds agree on the run's verdict; near one half, the host's spread decides it. Only the
    spread between the rounds of this run is in it, not what differs between runs (the host's
    hour). The seed is fixed: the same run always reports the same share. None with fewer than
    three rounds in common (one round resamples to itself: always 0 or 1).
    """
    common = sorted(set.intersection(*(set(x["rounds"]) for x in proxies)))
    if len(common) < 3:
        return None
    rng = random.Random(7)
    hits = 0
    for _ in range(RESAMPLES):
        draw = [rng.choice(common) for _ in common]
        hits += bool(holds(*(statistics.median(x["rounds"][r][key] for r in draw) for x in proxies)))
    return hits / RESAMPLES


def targets(results):
    """The issue's targets, checked against this run (tracseq-proxy vs the better of the two)."""
    t, n, h = (results.get((p, "mesh")) for p in ("tracseq", "nginx", "haproxy"))
    d = results.get(("direct", "plain"))
    if not (t and n and h and d):
        return []
    def ok(b):
        return "met" if b else "**not met**"
    def judge(key, holds, values):
        """The run's verdict on `values` and the share of resamples of `key` that agree: one
        condition (`holds(ours, nginx's, HAProxy's)`) for both."""
        s = resampled_share((t, n, h), key, holds)
        return ok(holds(*values)), "—" if s is None else f"{100 * s:.0f}%"
    out = ["## Targets (issue 7), this run", "",
           "| target | tracseq-proxy | nginx | HAProxy | result | holds in resamples of the rounds |",
           "|---|---:|---:|---:|---|---:|"]
    for key, name in (("p50", "mesh added latency p50 µs < both"), ("p99", "mesh added latency p99 µs < both")):
        a = [r[key] - d[key] for r in (t, n, h)]
        # The direct run's median is subtracted from all three alike: comparing the proxies'
        # own medians is the same test.
        verdict, held = judge(key, lambda tm, nm, hm: tm < nm and tm < hm, a)
        out.append(f"| {name} | {a[0]:.0f} | {a[1]:.0f} | {a[2]:.0f} | {verdict} | {held} |")
    best = min(n["cpu_per_1k"], h["cpu_per_1k"])
    # Round by round, joined on the round number (a round a proxy lacks shows as "—").
    numbers = sorted(set(t["rounds"]) | set(n["rounds"]) | set(h["rounds"]))
    def each(f, proxies):
        out = []
        for k in numbers:
            rs = [x["rounds"].get(k) for x in proxies]
            out.append(f(*rs) if all(rs) else "—")
        return out
    per_round = each(lambda tr, nr, hr: f"{tr['cpu_per_1k'] / min(nr['cpu_per_1k'], hr['cpu_per_1k']):.2f}×", (t, n, h))
    verdict, held = judge("cpu_per_1k", lambda tm, nm, hm: tm <= 0.8 * min(nm, hm),
                          [x["cpu_per_1k"] for x in (t, n, h)])
    out.append(f"| mesh CPU s / 1k req ≤ 0.8 × the better ({0.8 * best:.3f}) | {t['cpu_per_1k']:.3f} | {n['cpu_per_1k']:.3f} | "
               f"{h['cpu_per_1k']:.3f} | {verdict} ({t['cpu_per_1k'] / best:.2f}×) | {held} |")
    cpu_note = ("Mesh CPU of tracseq-proxy ÷ the better of nginx and HAProxy, round by round: "
                + ", ".join(per_round) + ".")
    cpu_note += (" Mesh added p99 µs round by round, tracseq-proxy / nginx / HAProxy: "
                 + ", ".join(each(lambda tr, nr, hr, dr: f"{tr['p99'] - dr['p99']:.0f} / {nr['p99'] - dr['p99']:.0f} / "
                                  f"{hr['p99'] - dr['p99']:.0f}", (t, n, h, d))) + ".")
    s = results.get(("tracseqstd", "mesh"))
    if s:
        added = [s[k] - d[k] for k in ("p50", "p99")]
        cpu_note += (f" The build without PGO, same run: added p50 {added[0]:.0f} µs, p99 {added[1]:.0f} µs, "
                     f"CPU {s['cpu_per_1k']:.3f} s / 1k ({s['cpu_per_1k'] / best:.2f}× the better), "
                     f"peak RSS {s['rss_mib']:.1f} MiB.")
    best = min(n["rss_mib"], h["rss_mib"])
    verdict, held = judge("rss_mib", lambda tm, nm, hm: tm <= min(nm, hm) / 2, [x["rss_mib"] for x in (t, n, h)])
    out.append(f"| peak RSS of both sidecars ≤ half the better pair ({best / 2:.1f} MiB) | {t['rss_mib']:.1f} | {n['rss_mib']:.1f} | "
               f"{h['rss_mib']:.1f} | {verdict} ({t['rss_mib'] / best:.2f}×) | {held} |")
    if "big_rss_mib" in t:
        # Judged on the worst round, not a median: there is nothing to resample.
        out.append(f"| 1 GiB streamed, each sidecar's peak RSS < 32 MiB | {t['rss_each_max_mib']:.1f} (largest) | | | "
                   f"{ok(t['rss_each_max_mib'] < 32 and t.get('big_bytes') == 1 << 30)} | (every round) |")
    resample_note = (f"\"Holds in resamples\": the rounds of the three proxies drawn again with replacement, {RESAMPLES:,} "
                     "times (the same rounds for every proxy, which ran side by side; only rounds all three have; — with "
                     "fewer than three), and the share of draws whose medians meet the target. Near 100% (or 0%) "
                     "the rounds agree on the verdict; near 50% they split on it, and the host's "
                     "spread decides the run's verdict. Only the spread within the run is seen: on this shared host, runs "
                     "half an hour apart have differed by more.")
    return out + ["", resample_note, "", cpu_note, ""]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("md")
    ap.add_argument("svg")
    ap.add_argument("--duration", default="10")
    ap.add_argument("--rate", default="1000")
    ap.add_argument("--conns", default="16")
    ap.add_argument("--rounds", default="1")
    ap.add_argument("--build", default="cargo build --release")
    ap.add_argument("--std-build", default="the plain `cargo build --release` of the same commit")
    a = ap.parse_args()
    global CONNS
    CONNS = int(a.conns)
    results = {}
    for topo in ("plain", "mesh"):
        for p in PROXIES:
            r = load(a.out, f"{p}-{topo}", float(a.rate), float(a.duration))
            if r:
                results[(p, topo)] = r
    if not results:
        sys.exit("report: no results in " + a.out)
    svg_chart(results, a.svg)
    m = machine()
    # Runs before the slices (no "slices" in their meta.json) were measured one proxy at a time.
    sliced = max(r["slices"] for res in results.values() for r in res["rounds"].values())
    lines = [
        "# Benchmarks",
        "",
        "Produced by `benches/load/compare` (run by hand; numbers below are from one run, so every",
        "comparison is within the same run on the same machine). Regenerate with",
        "`benches/load/compare` — it rewrites this file and `docs/benchmarks-latency.svg`.",
        f"Each number is the median of {a.rounds} round(s); every round starts fresh proxy processes.",
    ]
    if sliced:
        lines += [
            "Within a round all proxies run side by side (the ones not under load sleep) and the fixed-rate",
            f"run of each is cut into {sliced} slices taken in turn (ABCD, BCDA, CDAB, ...), so a noisy",
            "stretch of the shared host falls on every proxy alike; the order also turns by one place",
            "every round. Closed-loop runs and the 1 GiB check follow, one proxy at a time.",
        ]
    else:
        lines += ["Within a round the proxies are measured one after the other, in an order that turns by",
                  "one place each round."]
    lines += [
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, Linux {m['kernel']}; {m['nginx']}; {m['haproxy']}.",
        f"Each proxy process is pinned to CPU 1 with one worker (`--workers 1`, `worker_processes 1`,",
        f"`nbthread 1`); the upstream (nginx `return 200`) and the load generators are pinned to CPU 0.",
        f"Latency: `oha -q {a.rate} -c {a.conns} --latency-correction` for {a.duration}s (keep-alive,",
        "coordinated-omission corrected" + (
            "; nearest-rank percentiles over every request of the round's slices, leaving out the"
            f" {a.conns} per slice that open the client's connections" if sliced else "") + ").",
        f"Throughput: `wrk -t1 -c{a.conns}` for {a.duration}s, closed loop.",
        "CPU: on-CPU time of all threads of the proxy processes (scheduler accounting,",
        "`/proc/<pid>/task/*/schedstat`) during the fixed-rate run, per 1,000 requests.",
        "RSS: peak resident set (VmHWM) of the proxy processes, summed (nginx: master + worker).",
        "tracseq-proxy runs with its defaults: metrics on, load shedding, circuit breaker, retries.",
        f"tracseq-proxy build: {a.build}"
        + (f"; \"no PGO\" is {a.std_build}." if any(p == "tracseqstd" for p, _ in results) else "."),
        "",
        "![latency chart](benchmarks-latency.svg)",
        "",
    ]
    for topo, title in (("plain", "One hop (client → proxy → upstream)"),
                        ("mesh", "Mesh hop (client → outbound proxy → mTLS 1.3 → inbound proxy → upstream)")):
        rows = [(p, results[(p, topo)]) for p in PROXIES if (p, topo) in results]
        if not rows:
            continue
        direct = results.get(("direct", "plain"))
        lines += [f"## {title}", "",
                  "| proxy | p50 µs | p99 µs | p99.9 µs | added p50 µs | added p99 µs | req/s (closed loop) | CPU s / 1k req | peak RSS MiB |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for p, r in rows:
            ap50 = r["p50"] - direct["p50"] if direct and p != "direct" else 0
            ap99 = r["p99"] - direct["p99"] if direct and p != "direct" else 0
            lines.append(f"| {LABEL[p]} | {r['p50']:.0f} | {r['p99']:.0f} | {r['p999']:.0f} | {ap50:.0f} | {ap99:.0f} | "
                         f"{r['rps']:.0f} | {r['cpu_per_1k']:.3f} | {r['rss_mib']:.1f} |")
        lines.append("")
    big = [(p, results[(p, "mesh")]) for p in PROXIES if (p, "mesh") in results and "big_mbps" in results[(p, "mesh")]]
    if big:
        lines += ["## 1 GiB streamed through the mesh hop", "",
                  "| proxy | MB/s | bytes | status | peak RSS of both proxies, MiB |", "|---|---:|---:|---|---:|"]
        for p, r in big:
            lines.append(f"| {LABEL[p]} | {r['big_mbps']:.0f} | {r['big_bytes']} | {r['big_status']} | {r['big_rss_mib']:.1f} |")
        lines.append("")
    lines += cpu_split(results)
    lines += targets(results)
    # Hand-written notes (profiles, before/after of optimisations) live below the marker and
    # survive regeneration.
    history = "<!-- history: kept across runs -->\n"
    try:
        with open(a.md) as f:
            old = f.read()
        if "<!-- history" in old:
            history = old[old.index("<!-- history"):]
    except OSError:
        pass
    with open(a.md, "w") as f:
        f.write("\n".join(lines) + "\n" + history)


if __name__ == "__main__":
    main()
