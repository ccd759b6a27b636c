"""The live-capture bench's Markdown report (cogs/benchmarks/live.py measures)."""

from __future__ import annotations

from typing import Any

from cogs.benchmarks.common import md_table


def _m(x: dict[str, Any] | None, fmt: str = "{:,.0f}") -> str:
    if not x:
        return "-"
    return f"{fmt.format(x['median'])} ({fmt.format(x['min'])}-{fmt.format(x['max'])}, n={x['n']})"


def goal(e: dict[str, Any], goal_mbps: float) -> str:
    """Whether a configuration reached the goal: met (median), not shown (the replayer
    itself stopped below it with nothing dropped), or missed (drops below it)."""
    m = e.get("sustained_mbps")
    if m and m["median"] >= goal_mbps:
        return "met"
    if m and e.get("replay_limited") == e["rounds"]:
        return "not shown: the replay stopped below it, nothing dropped"
    return "missed"


def _configs(s: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(nf, n, e) for nf, per in s.items() if isinstance(per, dict) for n, e in per.items()]


def readme_block(data: dict[str, Any]) -> str:
    """The README's figure block (``<!-- bench:live -->``)."""
    s = data["summary"]
    rows = [
        [nf, n, _m(e.get("sustained_mbps")), _m(e.get("sustained_pps")), f"{e.get('replay_limited', 0)}/{e['rounds']}",
         f"{_m(e.get('cpu_us_per_packet'), '{:.1f}')}", f"{e['parse_us_per_packet']['median']:.2f} / "
         f"{e['state_us_per_packet']['median']:.2f}" if e.get("parse_us_per_packet") else "-",
         f"{e['ops_per_packet']['median']:.3f}" if e.get("ops_per_packet") else "-", goal(e, s["goal_mbps"])]
        for nf, n, e in _configs(s)
    ]  # fmt: skip
    ceiling = data["environment"].get("replay_ceiling_no_capture", {})
    return (
        md_table(
            [
                "NF",
                "workers",
                "zero-drop Mbit/s",
                "packets/s",
                "replay-limited",
                "CPU us/captured pkt",
                "parse / state us",
                "ops/pkt",
                f"{s['goal_mbps']:,.0f} Mbit/s",
            ],
            rows,
        )
        + f"\nMix: mean {s['mix_mean_bytes']} bytes a frame. tcpreplay alone sends {ceiling.get('mbps', '?')} Mbit/s "
        "into the host here; *replay-limited* rounds dropped nothing at its top speed.\n"
    )


def markdown(data: dict[str, Any]) -> str:
    s, env = data["summary"], data["environment"]
    rows = []
    for nf, n, e in _configs(s):
        limited = e.get("replay_limited", 0)
        rows.append([
            nf, n, _m(e.get("sustained_mbps")), _m(e.get("sustained_pps")),
            f"{limited}/{e['rounds']}" if e.get("sustained_mbps") else f"none of {e['rounds']}",
            _m(e.get("cpu_us_per_packet"), "{:.1f}"), _m(e.get("parse_us_per_packet"), "{:.2f}"),
            _m(e.get("state_us_per_packet"), "{:.2f}"), _m(e.get("ops_per_packet"), "{:.3f}"),
            _m(e.get("captured_share"), "{:.3f}"), goal(e, s["goal_mbps"]),
        ])  # fmt: skip
    ceiling = env.get("replay_ceiling_no_capture", {})
    head = (
        f"# Live capture: highest zero-drop rate of the packet mix per host{' (--quick)' if data['quick'] else ''}\n\n"
        f"Mix: mean {s['mix_mean_bytes']} bytes a frame; one middlebox host of a lab, replayed into its eth0 by "
        f"tcpreplay (alone, it sends {ceiling.get('mbps', '?')} Mbit/s, {ceiling.get('pps', '?')} packets/s here). "
        f"Medians over the rounds (min-max, n). *Replay-limited*: rounds where the top speed itself dropped nothing, "
        f"so the host sustains at least that. CPU, parse and state per **captured** packet (after the kernel "
        f"filter); ops: coordinator ops per captured packet. Goal: {s['goal_mbps']:,.0f} Mbit/s per host.\n\n"
        f"Commit {str(env.get('commit', '?'))[:12]}{' (dirty)' if env.get('dirty') else ''}, {env.get('cpu_model')}, "
        f"{env.get('cores')} cores, load {env.get('load_average')}, loop {env.get('event_loop')}; calibration "
        f"redis-benchmark INCR -P 64: {s['redis_incr_p64_per_s']:,}/s.\n\n"
    )
    return head + md_table(
        ["NF", "workers", "Mbit/s", "packets/s", "replay-limited", "CPU us/pkt", "parse us", "state us", "ops/pkt",
         "captured share", "goal"],
        rows,
    )  # fmt: skip
