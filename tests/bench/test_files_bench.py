"""The files benchmark runs for real at a small size: every round is measured and reported,
and the figure is the median round's."""

from __future__ import annotations

from nexus_store.bench import _files


def test_the_files_benchmark_reports_every_round_and_the_median() -> None:
    results = _files.run(rounds=3, big_mib=4, count=20)
    big = results["big"]
    assert big["rounds"] == 3
    assert len(big["ratios"]) == 3
    assert all(r > 0 for r in big["ratios"])
    assert big["ratio"] == sorted(big["ratios"])[1]
    assert big["ours_mib_per_s"] > 0
    assert big["bare_mib_per_s"] > 0
    assert len(big["bare_runs_s"]) == 2
    assert big["download_mib_per_s"] > 0
    assert big["download_rss_growth_mib"] >= 0
    small = results["small"]
    assert small["files"] == 20
    assert small["ours_files_per_s"] > 0
    assert small["ratio"] > 0


def test_the_median_round_of_an_even_count_is_the_lower_middle() -> None:
    runs = [{"ratio": r} for r in (0.9, 0.7, 0.8, 1.0)]
    assert _files.median_round(runs)["ratio"] == 0.8
    assert _files.median_round([{"ratio": 0.5}])["ratio"] == 0.5
