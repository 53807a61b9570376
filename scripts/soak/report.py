"""The soak's figures, each against the issue's bound, per daemon:
target/soak/report.md and the plot target/soak/soak.png (matplotlib)."""

import collections
import itertools
import os
import platform
import time

from soak import (
    BATCH,
    EXPECTED_INSTANCES,
    FOR,
    IDLE_THRESHOLD,
    POLL,
    RL,
    UDP_RECV_BUFFER,
    WINDOW,
    pick,
)

LEDGER_TENANT_PREFIXES = ("t0", "hog", "idler", "blocker", "stormy")


def counted(sample, tenants):
    """Events the daemon counted for the ledger's tenants."""
    out = collections.Counter()
    for (name, labels), v in sample.items():
        if name == "tenantwatch_tenant_queries_total":
            lab = dict(labels)
            if lab.get("tenant") in tenants:
                out[lab["tenant"]] += v
    return out


def accounting(soak, d):
    """Ledger vs counters between consecutive checkpoints (the senders
    parked): what was lost, in which kind of interval, and why."""
    tenants = soak.ledger.tenants
    rows = []
    cps = soak.checkpoints[d.name]
    for (t1, s1, l1), (t2, s2, l2) in itertools.pairwise(cps):
        sent = l2[d.name] - l1[d.name]
        start1 = (pick(s1, "process_start_time_seconds") or [0])[0]
        start2 = (pick(s2, "process_start_time_seconds") or [0])[0]
        restarted = start1 != start2
        c1, c2 = sum(counted(s1, tenants).values()), sum(counted(s2, tenants).values())
        got = c2 if restarted else c2 - c1
        overlapping = [f for f in soak.faults if f.start <= t2 and f.end + 2 >= t1]
        kinds = {f.kind for f in overlapping}
        killed = restarted or any(
            f.kind in ("daemon_kill9", "daemon_sigterm_during_scrapes") and d.name in f.note
            for f in overlapping
        )
        burst = "udp_burst" in kinds
        drops = (
            0.0
            if restarted
            else (
                sum(pick(s2, "tenantwatch_udp_kernel_drops_total"))
                - sum(pick(s1, "tenantwatch_udp_kernel_drops_total"))
            )
        )
        rows.append(
            {
                "t1": t1,
                "t2": t2,
                "sent": sent,
                "counted": got,
                "lost": sent - got,
                "restarted": restarted,
                "killed": killed,
                "burst": burst,
                "kernel_drop_events": drops * BATCH,
                "kinds": sorted(kinds),
            }
        )
    return rows


def detection(soak, d):
    """Each misbehaviour: when its flag was first seen and when it was
    gone, against the bounds; and flags on tenants that behaved."""
    obs = soak.flags[d.name]
    out = []
    windows = collections.defaultdict(list)
    for m in soak.misbehaviours:
        onset, ended = m.effective()
        if onset is None:
            continue
        ended = ended or soak.end
        lead = IDLE_THRESHOLD if m.kind == "idle_in_transaction" else FOR
        raise_bound = (
            lead + 2 * POLL + 2.0
        )  # for (or threshold) + one poll + one evaluation + our 2 s probe
        clear_bound = (
            FOR + WINDOW + 2 * POLL + 2.0
        )  # cooldown + the window to forget + poll/eval + probe
        raised = next((t for t, fl in obs if t >= onset and (m.tenant, m.kind) in fl), None)
        cleared = next((t for t, fl in obs if t >= ended and (m.tenant, m.kind) not in fl), None)
        seen = raised is not None and cleared is not None
        ok = seen and raised - onset <= raise_bound and cleared - ended <= clear_bound
        out.append(
            {
                "kind": m.kind,
                "tenant": m.tenant,
                "start": onset - soak.t0,
                "end": ended - soak.t0,
                "late_onset": onset - m.began,
                "raised_after": None if raised is None else raised - onset,
                "raise_bound": raise_bound,
                "cleared_after": None if cleared is None else cleared - ended,
                "clear_bound": clear_bound,
                "seen": seen,
                "ok": ok,
                "problems": m.problems,
            }
        )
        windows[m.tenant].append((m.began, ended + clear_bound))
    wrong = collections.Counter()
    for t, fl in obs:
        for tenant, reason in fl:
            if not any(lo <= t <= hi for lo, hi in windows.get(tenant, [])) and tenant != "queue":
                wrong[(tenant, reason)] += 1
    return out, wrong


def ratelimit(soak):
    """Allowed answers per 10 s window and tenant, both daemons together,
    each held to what its deciding backend promises (the answer names it):
    those Redis decided against the quota, burst + qps x 10 s, plus one
    burst for each time Redis came back empty in or around the window (a
    new bucket starts full); those a daemon decided itself, because Redis
    was down or did not answer within `ratelimit.redis.timeout`
    (`fail_mode = "local"`), against its share, quota / the
    `expected_instances` (its own bucket starts full too). Each +5%. A
    window with no local answer and no Redis fault is "Redis up"."""
    w = 10.0
    out = []
    redis_faults = [f for f in soak.faults if f.family == "redis"]
    for client in soak.rl_clients:
        qps, burst = RL[client.tenant]
        quota = burst + qps * w
        share = round(burst / EXPECTED_INSTANCES) + qps / EXPECTED_INSTANCES * w
        redis_allowed = collections.Counter()
        local_allowed = collections.Counter()
        for t, daemon, allowed, backend in client.answers:
            if not allowed:
                continue
            b = int((t - soak.t0) // w)
            if backend == "redis":
                redis_allowed[b] += 1
            else:
                local_allowed[(b, daemon)] += 1
        for b in sorted(set(redis_allowed) | {b for b, _ in local_allowed}):
            lo, hi = soak.t0 + b * w, soak.t0 + (b + 1) * w
            touching = [f for f in redis_faults if f.start - 1 <= hi and f.end + 3 >= lo]
            local = {d: n for (bb, d), n in local_allowed.items() if bb == b}
            emptied = sum(1 for f in touching if f.kind == "redis_kill_restart_empty")
            redis_bound = (quota + burst * emptied) * 1.05
            local_bound = share * 1.05 + 1
            out.append(
                {
                    "tenant": client.tenant,
                    "window": b,
                    "quota": quota,
                    "allowed": redis_allowed[b] + sum(local.values()),
                    "bound": redis_bound + local_bound * len(local),
                    "redis": redis_allowed[b],
                    "local": local,
                    "outage": bool(touching or local),
                    "ok": redis_allowed[b] <= redis_bound
                    and all(v <= local_bound for v in local.values()),
                }
            )
    return out


RSS, RSS_ANON, TRACKED = 1, 5, 6  # fields of a sample in soak.series


def rss_slope(soak, d, field=RSS):
    """Per 10 minutes, as a fraction of the median, over the last three
    quarters of the run, within the daemon's longest life there; of RSS or
    of its anonymous part."""
    lo = soak.t0 + 0.25 * (soak.end - soak.t0)
    pts = [(x[0], x[field], x[4]) for x in soak.series[d.name] if x[0] >= lo and x[field]]
    by_life = collections.defaultdict(list)
    for t, r, s in pts:
        by_life[s].append((t, r))
    if not by_life:
        return None, "no samples"
    life = max(by_life.values(), key=len)
    if len(life) < 10 or life[-1][0] - life[0][0] < 0.4 * (soak.end - lo):
        return (
            None,
            f"no life long enough ({len(by_life)} lives in the span, ended by the injected kills)",
        )
    n = len(life)
    mt = sum(t for t, _ in life) / n
    mr = sum(r for _, r in life) / n
    slope = sum((t - mt) * (r - mr) for t, r in life) / max(
        1e-9, sum((t - mt) ** 2 for t, _ in life)
    )
    median = sorted(r for _, r in life)[n // 2]
    return slope * 600 / median, f"{n} samples over {life[-1][0] - life[0][0]:.0f}s"


def rss_judged(soak, d):
    """The slope is judged in runs of 20 minutes or more, for a daemon the
    injected kills leave alone."""
    return soak.minutes >= 20 and d.name != soak.daemons[-1].name


def rss_bound(soak, d):
    if soak.minutes < 20:
        return "< 1% (judged from 20 min)"
    if d.name == soak.daemons[-1].name:
        return "< 1% (shown; its lives end at the injected kills)"
    return "< 1%"


def p99(values):
    if not values:
        return None
    v = sorted(values)
    return v[min(len(v) - 1, int(0.99 * len(v)))]


def plot(soak, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 1, figsize=(11, 8), sharex=True)
    for d in soak.daemons:
        s = soak.series[d.name]
        t = [(x[0] - soak.t0) / 60 for x in s]
        (line,) = axes[0].plot(t, [(x[1] or 0) / 2**20 for x in s], label=d.name)
        axes[0].plot(
            t,
            [(x[5] or 0) / 2**20 for x in s],
            color=line.get_color(),
            linestyle=":",
            label=f"{d.name} anonymous",
        )
        axes[1].plot(t, [x[2] * 1000 for x in s], label=d.name)
        rate = [0.0] + [
            max(0.0, (b[3] - a[3]) / (b[0] - a[0])) if b[4] == a[4] else 0.0
            for a, b in itertools.pairwise(s)
        ]
        axes[2].plot(t, rate, label=d.name)
    for f in soak.faults:
        for ax in axes:
            ax.axvspan(
                (f.start - soak.t0) / 60,
                (max(f.end, f.start + 1) - soak.t0) / 60,
                color="red",
                alpha=0.08,
            )
    axes[0].set_ylabel("RSS (MiB; dotted: anonymous)")
    axes[1].set_ylabel("/metrics scrape (ms)")
    axes[2].set_ylabel("events received /s")
    axes[2].set_xlabel("minutes (red: faults)")
    for ax in axes:
        ax.legend(loc="upper right")
        ax.grid(alpha=0.3)
    fig.suptitle(f"tenantwatch soak, seed {soak.seed}, {soak.minutes:g} min")
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def write_series(soak, path):
    """Each daemon's samples (seconds into the run, RSS, scrape time, events
    counted, life's start, RSS's anonymous part), and the faults, for a look
    past the plot."""
    import csv

    with open(path, "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(
            [
                "daemon",
                "t_s",
                "rss_bytes",
                "scrape_s",
                "received_total",
                "life_started_s",
                "fault",
                "rss_anon_bytes",
                "tenants_tracked",
            ]
        )
        for d in soak.daemons:
            for t, rss, took, received, start, anon, tracked in soak.series[d.name]:
                out.writerow(
                    [
                        d.name,
                        f"{t - soak.t0:.1f}",
                        rss or "",
                        f"{took:.4f}",
                        received,
                        f"{start - soak.t0:.1f}" if start else "",
                        "",
                        anon or "",
                        f"{tracked:.0f}",
                    ]
                )
        for fault in soak.faults:
            out.writerow(["", f"{fault.start - soak.t0:.1f}", "", "", "", "", fault.kind, "", ""])


def fmt(v, unit=""):
    return "n/a" if v is None else (f"{v:.3g}{unit}" if isinstance(v, float) else f"{v}{unit}")


def write(soak, out_dir):
    lines = [
        f"# tenantwatch soak: {soak.minutes:g} minutes, seed {soak.seed}",
        "",
        f"- started {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(soak.t0))}; repeat with "
        f"`{'' if soak.full_load else 'SOAK_FULL_LOAD=0 '}SOAK_SEED={soak.seed} "
        f"SOAK_MINUTES={soak.minutes:g} scripts/soak.sh`",
        f"- machine: {os.cpu_count()} cores, {platform.machine()}, {platform.release()}; binary {soak.binary}",
        f"- capacity {soak.capacity:.0f} events/s ({soak.capacity_note}); steady load asked "
        f"{soak.rate:.0f} events/s, sent {sum(soak.ledger.sent.values()) / (soak.end - soak.t0):.0f} events/s "
        "on average (bursts included)",
        f"- UDP receive buffer granted {soak.udp_buffer / 2**20:.0f} MiB a daemon "
        f"(`ingest.udp_recv_buffer_bytes` {UDP_RECV_BUFFER / 2**20:.0f} MiB)",
        f"- faults injected: {len(soak.faults)}; misbehaviours: {len(soak.misbehaviours)}",
        "",
    ]
    ok = True
    rows = []
    timed = soak.minutes >= 20 or os.environ.get("SOAK_JUDGE_TIMING") == "1"

    def timing(bound):
        return bound if timed else f"{bound} (shown; judged from 20 min)"

    acc, det = {}, {}
    for d in soak.daemons:
        a = accounting(soak, d)
        acc[d.name] = a
        steady_lost = sum(r["lost"] for r in a if not r["killed"] and not r["burst"])
        explained = sum(r["lost"] for r in a if r["killed"] or r["burst"])
        drops = sum(r["kernel_drop_events"] for r in a if r["burst"])
        found, wrong = detection(soak, d)
        det[d.name] = (found, wrong)
        slope, slope_note = rss_slope(soak, d)
        anon_slope, _ = rss_slope(soak, d, RSS_ANON)
        hz = p99([x for _, x in soak.healthz[d.name]])
        recov = [f.recovery.get(d.name) for f in soak.faults if f.family in ("postgres", "redis")]
        worst = None if not recov else (float("inf") if None in recov else max(recov))
        # The tenant flood: the store fills to max_tenants and holds there.
        tracked = max((x[TRACKED] for x in soak.series[d.name]), default=0)
        floods = sum(1 for f in soak.faults if f.kind == "tenant_flood")
        figures = [
            (
                "panics, crashes, unexpected exits",
                soak.panics.get(d.name, 0) + soak.unexpected[d.name],
                "0",
                soak.panics.get(d.name, 0) + soak.unexpected[d.name] == 0,
            ),
            # A run under 20 minutes cannot tell a leak from warm-up (the
            # share windows, the tenant flood filling max_tenants): shown, not judged.
            # The kills go to the last daemon only (faults.Injector), so
            # that the first one's slope is read over one whole life; a
            # life begun at a kill is warm-up, shown, not judged.
            (
                "RSS slope, last 3/4 (per 10 min, of median)",
                None if slope is None else f"{slope * 100:+.2f}%",
                rss_bound(soak, d),
                not rss_judged(soak, d) or (slope is not None and abs(slope) < 0.01),
            ),
            # Shown beside it: RSS less the binary's pages, which grow as
            # code runs for the first time.
            (
                "  of which anonymous memory (heap, stacks)",
                None if anon_slope is None else f"{anon_slope * 100:+.2f}%",
                "shown",
                True,
            ),
            (
                "tenants tracked, peak (floods past max_tenants)",
                f"{tracked:.0f}"
                + (f" ({floods} flood{'s' if floods != 1 else ''})" if floods else ""),
                f"<= {soak.max_tenants}",
                tracked <= soak.max_tenants,
            ),
            ("events lost below capacity, no kill", steady_lost, "0", steady_lost == 0),
            ("events lost in bursts and kills (explained below)", explained, "counted", True),
            ("  of which kernel drops in bursts (events)", drops, "counted", True),
            (
                "counter resets outside restarts (Prometheus)",
                soak.prom_results["resets"].get(d.name),
                "0",
                soak.prom_results["resets"].get(d.name) == 0,
            ),
            ("NaN / Inf samples", soak.nonfinite[d.name], "0", soak.nonfinite[d.name] == 0),
            (
                "misbehaviours flagged, and cleared after",
                f"{sum(x['seen'] for x in found)}/{len(found)}",
                "all",
                bool(found) and all(x["seen"] for x in found),
            ),
            ("healthy tenants ever flagged", len(wrong), "0", not wrong),
            # Timing figures: judged in runs of 20 minutes or more (or with
            # SOAK_JUDGE_TIMING=1); a short run, the one CI makes on a
            # machine it shares, shows them against their bounds without
            # failing on them (no timed assertions in tests).
            (
                "misbehaviours flagged and cleared in time",
                f"{sum(x['ok'] for x in found)}/{len(found)}",
                timing("all"),
                not timed or (bool(found) and all(x["ok"] for x in found)),
            ),
            (
                "worst recovery to up == 1 with fresh figures (s)",
                worst,
                timing(f"<= {2 * POLL:.0f}"),
                not timed or (worst is not None and worst <= 2 * POLL),
            ),
            (
                "/healthz p99 (ms)",
                None if hz is None else hz * 1000,
                timing("<= 50"),
                not timed or (hz is not None and hz <= 0.05),
            ),
        ]
        for name, value, bound, good in figures:
            rows.append((d.name, name, value, bound, good))
            ok &= good
        lines.append(f"RSS slope for {d.name}: {slope_note}.")
    rf = soak.prom_results["rule_failures"]
    rl = ratelimit(soak)
    rl_up_bad = [r for r in rl if not r["outage"] and not r["ok"]]
    rl_out_bad = [r for r in rl if r["outage"] and not r["ok"]]
    rows += [
        ("both", "rule evaluation failures (Prometheus)", rf, "0", rf == 0),
        (
            "both",
            "rules not healthy",
            len(soak.prom_results["rules_unhealthy"]),
            "0",
            not soak.prom_results["rules_unhealthy"],
        ),
        (
            "both",
            "rate-limit windows over quota +5%, Redis up (Redis answered every check)",
            f"{len(rl_up_bad)}/{sum(not r['outage'] for r in rl)}",
            "0",
            not rl_up_bad,
        ),
        (
            "both",
            "rate-limit windows over bound, Redis out or slow (fail_mode local: Redis's and each daemon's share)",
            f"{len(rl_out_bad)}/{sum(r['outage'] for r in rl)}",
            "0",
            not rl_out_bad,
        ),
        ("both", "problems seen by the fault injector", len(soak.problems), "0", not soak.problems),
    ]
    ok &= (
        rf == 0
        and not rl_up_bad
        and not rl_out_bad
        and not soak.problems
        and not soak.prom_results["rules_unhealthy"]
    )
    lines += ["", "| daemon | figure | value | bound | ok |", "| --- | --- | --- | --- | --- |"]
    lines += [
        f"| {d} | {n} | {fmt(v)} | {b} | {'yes' if g else '**NO**'} |" for d, n, v, b, g in rows
    ]
    lines += [
        "",
        f"**Result: {'PASS' if ok else 'FAIL'}**",
        "",
        "![soak](soak.png)",
        "",
        "## Faults",
        "",
        "| at | lasted | kind | note | recovery (s) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for f in sorted(soak.faults, key=lambda f: f.start):
        rec = ", ".join(f"{k} {fmt(v)}" for k, v in f.recovery.items())
        lines.append(
            f"| {f.start - soak.t0:.0f}s | {f.end - f.start:.1f}s | {f.kind} | {f.note} | {rec} |"
        )
    lines += [
        "",
        "## Misbehaviours",
        "",
        "Start and end are when each was in effect (its first and last event delivered, the lock held "
        "with enough waiters, the transaction open); `onset late` is how long after its scheduled "
        "start that was.",
        "",
        "| daemon | kind | tenant | start | onset late | end | raised after | bound | "
        "cleared after | bound | ok |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, (found, wrong) in det.items():
        for x in found:
            lines.append(
                f"| {name} | {x['kind']} | {x['tenant']} | {x['start']:.0f}s | {x['late_onset']:.1f}s | "
                f"{x['end']:.0f}s | "
                f"{fmt(x['raised_after'])} | {x['raise_bound']:.0f} | {fmt(x['cleared_after'])} | "
                f"{x['clear_bound']:.0f} | {'yes' if x['ok'] else '**NO**'} |"
            )
        for x in found:
            for p in x["problems"]:
                lines.append(f"- {name}: {x['kind']} session trouble: {p}")
        for (tenant, reason), n in sorted(wrong.items()):
            lines.append(
                f"- {name}: `{tenant}` flagged `{reason}` outside a misbehaviour ({n} observations)"
            )
    lines += [
        "",
        "## Event ledger, checkpoint to checkpoint (intervals with a loss)",
        "",
        "| daemon | from | to | sent | counted | lost | why |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, a in acc.items():
        for r in a:
            if r["lost"] != 0:
                why = (
                    "daemon killed/restarted: in memory at the kill or sent while it was down"
                    if r["killed"]
                    else f"UDP burst: {r['kernel_drop_events']:.0f} events in kernel-dropped "
                    "datagrams"
                    if r["burst"]
                    else f"UNEXPLAINED; kernel-dropped datagrams held "
                    f"{r['kernel_drop_events']:.0f} events"
                ) + f" ({', '.join(r['kinds'])})"
                lines.append(
                    f"| {name} | {r['t1'] - soak.t0:.0f}s | {r['t2'] - soak.t0:.0f}s | {r['sent']} | "
                    f"{r['counted']:.0f} | {r['lost']:.0f} | {why} |"
                )
        lines.append(
            f"| {name} | all | | {sum(r['sent'] for r in a)} | {sum(r['counted'] for r in a):.0f} | "
            f"{sum(r['lost'] for r in a):.0f} | {len(a)} intervals; HTTP refused to the client: "
            f"{soak.ledger.http_refused[name]} |"
        )
    lines += ["", "## Rate-limit clients", ""]
    for c in soak.rl_clients:
        n = len(c.answers)
        allowed = sum(1 for a in c.answers if a[2])
        lines.append(
            f"- `{c.tenant}` (qps {RL[c.tenant][0]}, burst {RL[c.tenant][1]}): {n} answers, {allowed} "
            f"allowed, errors {dict(c.errors)}"
        )
    for r in rl:
        if not r["ok"]:
            lines.append(
                f"- over the bound: `{r['tenant']}` window {r['window'] * 10}s: {r['allowed']} allowed "
                f"(Redis {r['redis']}, local {r['local']}), bound {r['bound']:.0f} "
                f"({'Redis fault' if r['outage'] else 'Redis up'})"
            )
    lines += [
        "",
        "## SQL",
        "",
        f"- healthy statements {sum(s.done for s in soak.sql)}, failed (faults) "
        f"{sum(s.failed for s in soak.sql)}",
        "",
        "## Problems",
        "",
    ]
    lines += [f"- {p}" for p in soak.problems] or ["- none"]
    text = "\n".join(lines) + "\n"
    with open(os.path.join(out_dir, "report.md"), "w") as f:
        f.write(text)
    write_series(soak, os.path.join(out_dir, "series.csv"))
    try:
        plot(soak, os.path.join(out_dir, "soak.png"))
    except Exception as e:  # the figures stand without the picture; say why it is missing
        print(f"[soak] plot failed: {e}")
    print(text)
    print(f"[soak] report: {os.path.join(out_dir, 'report.md')}; result {'PASS' if ok else 'FAIL'}")
    return ok
