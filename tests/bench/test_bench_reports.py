"""The benchmarks' reports say, for every figure with a target, whether it is met."""

from __future__ import annotations

from typing import Any

from nexus_store.bench._drain import report_lines as drain_report
from nexus_store.bench._http import report_lines


def _figure(ratio: float, floor_ratio: float | None = None) -> dict[str, Any]:
    figure: dict[str, Any] = {
        "ours_ops_per_s": 40_000,
        "bare_ops_per_s": 50_000,
        "ours_changes_per_s": 120_000,
        "bare_changes_per_s": 150_000,
        "ratio": ratio,
        "ours_server_cpu_us_per_item": 20.0,
        "bare_server_cpu_us_per_item": 15.0,
        "ours_client_cpu_us_per_item": 5.0,
        "bare_client_cpu_us_per_item": 3.0,
    }
    if floor_ratio is not None:
        figure |= {"floor_ops_per_s": 60_000, "floor_ratio": 1.2, "ours_floor_ratio": floor_ratio}
    return figure


def _results() -> dict[str, Any]:
    return {
        "ops": 20_000,
        "op_bytes": 243,
        "sqlite_push": {"batch_100": _figure(0.7, 0.85), "batch_500": _figure(0.6, 0.62)},
        "postgres_push": {"batch_100": _figure(0.5, 0.5), "batch_500": _figure(0.6, 0.81)},
        "sqlite_pull": {"changes": 1, "page_500": _figure(0.66), "page_5000": _figure(0.84)},
    }


def _after(lines: list[str], row: str, marker: str) -> str:
    """The first line holding ``marker`` after the row labelled ``row``."""
    start = next(i for i, line in enumerate(lines) if line.startswith(row))
    return next(line for line in lines[start:] if marker in line)


def test_each_target_of_the_throughput_issue_is_printed_with_its_verdict() -> None:
    lines = report_lines(_results())
    assert _after(lines, "push sqlite batch_100", "ours / floor").endswith(
        "ours / floor 0.850  (target >= 0.8: met)"
    )
    assert _after(lines, "push sqlite batch_500", "ours / floor").endswith(
        "ours / floor 0.620  (target >= 0.8: NOT met)"
    )
    assert _after(lines, "push postgres batch_500", "ours / floor").endswith(
        "ours / floor 0.810  (target >= 0.8: met)"
    )
    assert _after(lines, "pull sqlite page_500", "ratio").endswith(
        "ratio 0.660  (target >= 0.8: NOT met)"
    )
    assert _after(lines, "pull sqlite page_5000", "ratio").endswith(
        "ratio 0.840  (target >= 0.8: met)"
    )


def test_a_ratio_just_under_its_target_shows_the_digit_the_verdict_turns_on() -> None:
    results = _results()
    results["sqlite_pull"]["page_5000"] = _figure(0.796)
    lines = report_lines(results)
    assert _after(lines, "pull sqlite page_5000", "ratio").endswith(
        "ratio 0.796  (target >= 0.8: NOT met)"
    )


def test_ratios_without_a_target_carry_no_verdict() -> None:
    lines = report_lines(_results())
    # PostgreSQL at batch 100 has no target; neither has any push's ratio to the bare route.
    assert _after(lines, "push postgres batch_100", "ours / floor").endswith("ours / floor 0.50")
    pushes = [line for line in lines if line.startswith("push ")]
    assert len(pushes) == 4
    assert not any("target" in line for line in pushes)


def _drain(queued: int, peak: float) -> dict[str, Any]:
    return {
        "queued": queued,
        "ops_per_s": 20_000.0,
        "seconds": queued / 20_000,
        "bare_ops_per_s": 40_000,
        "ratio": 0.5,
        "push_only_ops_per_s": 45_000,
        "ratio_to_push_only": 0.44,
        "peak_rss_mib": peak,
        "rss_before_mib": 70.0,
    }


def test_the_drain_report_says_whether_the_large_drain_kept_memory_bounded() -> None:
    bounded = drain_report({"small": _drain(100_000, 84.0), "large": _drain(1_000_000, 85.0)})
    assert bounded[-1].endswith("+1.0 MiB on the 100,000-op drain's (memory bounded, target <= "
                                "+20 MiB: met)")  # fmt: skip
    grew = drain_report({"small": _drain(100_000, 84.0), "large": _drain(1_000_000, 294.0)})
    assert grew[-1].endswith("(memory bounded, target <= +20 MiB: NOT met)")
