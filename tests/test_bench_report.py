"""``bench/speed/report.py``: speed-result JSON -> BENCHMARKS.md tables and the SVG plot.

Everything runs on synthetic result files written into ``tmp_path``; nothing is mocked.
"""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from bench.speed import report

REPO = Path(__file__).resolve().parents[1]
SVG_NS = "{http://www.w3.org/2000/svg}"
DEVICE = "NVIDIA H100 80GB HBM3"


def run(impl: str, wall_s: float, **extra: object) -> dict:
    """One timed variant as ``python -m bench run`` writes it (stages trimmed unless given)."""
    doc = {"impl": impl, "precision": "bfloat16", "fast": "off", "timed_runs": 3, "first_call_s": 41.2}
    doc.update(wall_s=wall_s, rtf=wall_s / 60.0, peak_allocated_mib=7123.4, peak_reserved_mib=7800.0)
    doc.update(finite=True, stages={"text_encode": 0.01, "condition": 0.02, "dit_step_mean": 0.0625})
    doc.update(extra)
    return doc


def document(
    runs: list[dict],
    config: str = "2b-turbo",
    task: str = "text2music",
    seconds: float = 60.0,
    steps: int = 8,
    batch: int = 1,
    date: str = "2026-11-23T01:23:45Z",
    **extra: object,
) -> dict:
    case = {
        "config": config,
        "task": task,
        "seconds": seconds,
        "steps": steps,
        "batch": batch,
        "device": "cuda",
    }
    command = f"python -m bench run --config {config} --task {task} --batch {batch}"
    doc = {"kind": "speed", "date": date, "commit": "abc1234", "command": command, "case": case}
    doc.update(machine={"device": DEVICE, "capability": "9.0", "torch": "2.11.0", "host_cpus": 16}, runs=runs)
    doc.update(extra)
    return doc


def write(directory: Path, name: str, doc: dict | str) -> Path:
    path = directory / name
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return path


def cells(text: str, first: str) -> list[str]:
    """The cells of the (only) table row whose first cell is ``first``."""
    rows = [line for line in text.splitlines() if line.startswith(f"| {first} |")]
    assert len(rows) == 1, (first, rows)
    return [cell.strip() for cell in rows[0].strip("|").split(" | ")]


def summary(text: str, label: str) -> dict[str, str]:
    """A "Required cases" row keyed by the summary header."""
    return dict(zip(report.SUMMARY_HEADER, cells(text, label), strict=True))


TURBO_1 = "2b-turbo text2music, 60 s, 8 steps, batch 1"
LEGO_1 = "2b-base lego, 120 s, 50 steps, batch 1"
LEGO_4 = "2b-base lego, 120 s, 50 steps, batch 4"
BASE_RUNS = [run("diffusers", 2.0), run("acestep", 1.95), run("acestep-fast", 1.25, fast="graphs")]


def test_speedups_and_row_formatting(tmp_path: Path) -> None:
    write(tmp_path, "turbo.json", document(BASE_RUNS))
    text = report.markdown(report.load_results([tmp_path]))
    diffusers, eager, fast = cells(text, "diffusers"), cells(text, "acestep"), cells(text, "acestep-fast")
    speedup = report.RUN_HEADER.index("speed-up vs diffusers")
    assert (diffusers[speedup], eager[speedup], fast[speedup]) == ("1.00x", "1.03x", "1.60x")
    row = dict(zip(report.RUN_HEADER, fast, strict=True))
    assert row["wall s"] == "1.250" and row["RTF"] == "0.0208" and row["fast"] == "graphs"
    assert row["DiT step ms (mean)"] == "62.5" and row["text+cond s"] == "0.030"
    assert row["VAE decode s"] == "–"  # stage missing from the document
    assert row["peak alloc GiB"] == "6.96" and row["peak reserved GiB"] == "7.62"
    assert row["first call s"] == "41.2" and row["finite"] == "yes"
    heading = f"#### {TURBO_1} — {DEVICE}, 2026-11-23, commit abc1234"
    assert heading in text.splitlines()
    assert "`python -m bench run --config 2b-turbo --task text2music --batch 1`" in text


def test_no_diffusers_run_means_no_speedup(tmp_path: Path) -> None:
    write(tmp_path, "turbo.json", document([run("acestep", 1.5), run("acestep-fast", 1.0)]))
    text = report.markdown(report.load_results([tmp_path]))
    assert cells(text, "acestep")[report.RUN_HEADER.index("speed-up vs diffusers")] == "–"
    row = summary(text, TURBO_1)
    assert row["acestep vs diffusers (eager)"] == "–" and row["≥ 1.3x (acestep-fast)"] == "–"
    assert row["status"] == "measured"


def test_zero_results_every_required_case_not_measured(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "empty").mkdir()
    svg = tmp_path / "out" / "speed.svg"
    assert report.main([str(tmp_path / "empty"), "--out-svg", str(svg)]) == 0
    text = capsys.readouterr().out
    for config, task, seconds, steps, batch in report.REQUIRED_CASES:
        label = report.case_label((config, task, seconds, steps, batch))
        assert summary(text, label)["status"] == "not measured"
    assert "No speed results." in text
    ET.fromstring(svg.read_text())  # still a valid (empty) plot


def test_required_cases_measured_and_missing(tmp_path: Path) -> None:
    write(tmp_path, "turbo.json", document(BASE_RUNS))
    # A case outside the required list gets its own table but no summary row.
    write(tmp_path, "short.json", document([run("acestep", 0.5)], seconds=10.0))
    text = report.markdown(report.load_results([tmp_path]))
    assert summary(text, TURBO_1)["status"] == "measured"
    assert summary(text, LEGO_1)["status"] == "not measured"
    assert summary(text, LEGO_4)["status"] == "not measured"
    assert "#### 2b-turbo text2music, 10 s, 8 steps, batch 1" in text


def test_goals(tmp_path: Path) -> None:
    lego = {"config": "2b-base", "task": "lego", "seconds": 120.0, "steps": 50}
    # Batch 1: over 8 GiB, fast only 1.25x, eager 0.95x (slower beyond the 3 % allowance).
    runs_1 = [
        run("diffusers", 10.0),
        run("acestep", 10.5, peak_allocated_mib=8300.0),
        run("acestep-fast", 8.0),
    ]
    # Batch 4: exactly 8 GiB, fast 1.60x, eager 0.97x (inside the allowance).
    runs_4 = [
        run("diffusers", 2.0),
        run("acestep", 2.06, peak_allocated_mib=8192.0),
        run("acestep-fast", 1.25),
    ]
    write(tmp_path, "lego1.json", document(runs_1, batch=1, **lego))
    write(tmp_path, "lego4.json", document(runs_4, batch=4, **lego))
    write(tmp_path, "turbo.json", document(BASE_RUNS))
    text = report.markdown(report.load_results([tmp_path]))
    row_1, row_4, turbo = summary(text, LEGO_1), summary(text, LEGO_4), summary(text, TURBO_1)
    assert row_1["≤ 8 GiB (lego)"] == "not met" and row_1["peak alloc GiB (acestep)"] == "8.11"
    assert row_1["≥ 1.3x (acestep-fast)"] == "not met" and row_1["acestep-fast vs diffusers"] == "1.25x"
    assert row_1["never slower (acestep)"] == "not met" and row_1["acestep vs diffusers (eager)"] == "0.95x"
    assert row_4["≤ 8 GiB (lego)"] == "met"
    assert row_4["≥ 1.3x (acestep-fast)"] == "met" and row_4["acestep-fast vs diffusers"] == "1.60x"
    assert row_4["never slower (acestep)"] == "met" and row_4["acestep vs diffusers (eager)"] == "0.97x"
    assert turbo["≤ 8 GiB (lego)"] == "n/a"  # the memory goal is only for lego
    assert row_4["RTF (acestep-fast, else acestep)"] == "0.0208"
    assert "3 %" in text and "0.97x" in text  # the noise allowance is stated


def test_rtf_falls_back_to_eager(tmp_path: Path) -> None:
    write(tmp_path, "turbo.json", document([run("diffusers", 3.0), run("acestep", 2.4)]))
    row = summary(report.markdown(report.load_results([tmp_path])), TURBO_1)
    assert row["RTF (acestep-fast, else acestep)"] == "0.0400 (eager)"
    assert row["acestep-fast vs diffusers"] == "–"


def test_newest_result_per_case_wins(tmp_path: Path) -> None:
    # The newer file sorts first by name, so only the date can pick it.
    write(
        tmp_path,
        "a.json",
        document([run("diffusers", 3.0), run("acestep", 1.5)], date="2026-11-24T08:00:00Z"),
    )
    write(
        tmp_path,
        "z.json",
        document([run("diffusers", 3.0), run("acestep", 1.0)], date="2026-11-23T23:00:00Z"),
    )
    docs = report.load_results([tmp_path])
    assert len(docs) == 2
    text = report.markdown(docs)
    assert cells(text, "acestep")[report.RUN_HEADER.index("wall s")] == "1.500"
    assert summary(text, TURBO_1)["acestep vs diffusers (eager)"] == "2.00x"
    assert f"— {DEVICE}, 2026-11-24, commit" in text and "2026-11-23" not in text
    assert text.count(f"#### {TURBO_1}") == 1


def test_failed_run_rendering(tmp_path: Path) -> None:
    message = "CUDA out of memory. Tried to allocate 20.00 GiB; GPU 0 has a total capacity of 79 GiB"
    runs = [run("diffusers", 2.0), run("acestep", 1.9), {"impl": "acestep-fast", "error": message}]
    write(tmp_path, "turbo.json", document(runs))
    text = report.markdown(report.load_results([tmp_path]))
    row = dict(zip(report.RUN_HEADER, cells(text, "acestep-fast"), strict=True))
    assert row["wall s"] == "failed: " + message[:60]
    assert message[:62] not in text  # cut at 60 characters
    assert row["speed-up vs diffusers"] == "–" and row["finite"] == "–"
    summary_row = summary(text, TURBO_1)
    assert summary_row["acestep-fast vs diffusers"] == "failed"
    assert summary_row["≥ 1.3x (acestep-fast)"] == "not met"
    assert summary_row["RTF (acestep-fast, else acestep)"] == "0.0317 (eager)"


def test_failed_message_cannot_break_the_table(tmp_path: Path) -> None:
    runs = [run("diffusers", 2.0), {"impl": "acestep", "error": "bad | pipe\nand newline"}]
    write(tmp_path, "turbo.json", document(runs))
    text = report.markdown(report.load_results([tmp_path]))
    assert "| failed: bad \\| pipe and newline |" in text
    assert len(cells(text, "acestep")) == len(report.RUN_HEADER)  # the escaped pipe is not a separator


def test_compiled_vs_eager_check_line(tmp_path: Path) -> None:
    ok = {"fast_vs_eager_rel_err": 0.004, "fast_vs_eager_tolerance": 0.05}
    bad = {"fast_vs_eager_rel_err": 0.08, "fast_vs_eager_tolerance": 0.05}
    write(tmp_path, "b1.json", document(BASE_RUNS, checks=ok))
    write(tmp_path, "b4.json", document(BASE_RUNS, batch=4, checks=bad))
    write(tmp_path, "lego.json", document(BASE_RUNS, config="2b-base", task="lego", checks={}))
    text = report.markdown(report.load_results([tmp_path]))
    lines = text.splitlines()
    assert "compiled vs eager: relative L2 difference 0.0040 (tolerance 0.05) — within tolerance" in lines
    assert "compiled vs eager: relative L2 difference 0.0800 (tolerance 0.05) — OUTSIDE tolerance" in lines
    assert text.count("compiled vs eager") == 2  # nothing for the case with empty checks


def test_other_kinds_are_skipped(tmp_path: Path) -> None:
    write(tmp_path, "memory.json", {"kind": "memory", "whatever": 1})
    write(tmp_path, "turbo.json", document(BASE_RUNS))
    assert [doc["kind"] for doc in report.load_results([tmp_path])] == ["speed"]


def test_cases_sorted_by_config_task_batch(tmp_path: Path) -> None:
    write(tmp_path, "1.json", document(BASE_RUNS, batch=4))
    write(tmp_path, "2.json", document(BASE_RUNS, config="2b-base", task="lego", seconds=120.0, steps=50))
    write(tmp_path, "3.json", document(BASE_RUNS, batch=1))
    text = report.markdown(report.load_results([tmp_path]))
    headings = [line.split(" — ")[0] for line in text.splitlines() if line.startswith("#### ")]
    assert headings == [
        f"#### {LEGO_1}",
        f"#### {TURBO_1}",
        "#### 2b-turbo text2music, 60 s, 8 steps, batch 4",
    ]


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("{not json", "not valid JSON"),
        (json.dumps(document([run("acestep", 1.0)], date="yesterday")), "'date'"),
        (json.dumps({"kind": "speed", "date": "2026-11-23T00:00:00Z", "runs": []}), "'case'"),
        (json.dumps(document([{"impl": "acestep", "rtf": 0.1}])), "'runs[0].wall_s'"),
        (json.dumps({k: v for k, v in document([]).items() if k != "runs"}), "'runs'"),
        (json.dumps([1, 2]), "JSON object"),
    ],
)
def test_bad_file_exits_2_naming_file_and_key(
    tmp_path: Path, capsys: pytest.CaptureFixture, content: str, expected: str
) -> None:
    write(tmp_path, "good.json", document(BASE_RUNS))
    bad = write(tmp_path, "broken_result.json", content)
    assert report.main([str(tmp_path), "--out-svg", str(tmp_path / "speed.svg")]) == 2
    captured = capsys.readouterr()
    assert str(bad) in captured.err and expected in captured.err
    assert captured.out == ""
    assert not (tmp_path / "speed.svg").exists()


def test_missing_case_key_is_named(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    doc = document(BASE_RUNS)
    del doc["case"]["steps"]
    bad = write(tmp_path, "r.json", doc)
    assert report.main([str(bad), "--out-svg", str(tmp_path / "s.svg")]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "'case.steps'" in err


def test_missing_input_path_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert report.main([str(tmp_path / "nope.json"), "--out-svg", str(tmp_path / "s.svg")]) == 2
    assert "nope.json" in capsys.readouterr().err


def test_out_md_and_files_as_arguments(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    first = write(tmp_path, "one.json", document(BASE_RUNS))
    second = write(tmp_path, "two.json", document(BASE_RUNS, batch=4))
    out_md, out_svg = tmp_path / "md" / "speed.md", tmp_path / "speed.svg"
    assert report.main([str(first), str(second), "--out-md", str(out_md), "--out-svg", str(out_svg)]) == 0
    assert capsys.readouterr().out == ""
    text = out_md.read_text()
    assert summary(text, "2b-turbo text2music, 60 s, 8 steps, batch 4")["status"] == "measured"
    assert out_svg.read_text() == report.svg_plot(report.load_results([first, second]))


def bars(svg: str) -> list[ET.Element]:
    root = ET.fromstring(svg)
    return [rect for rect in root.iter(f"{SVG_NS}rect") if rect.get("class") == "bar"]


def test_svg_one_bar_per_run_and_deterministic(tmp_path: Path) -> None:
    write(tmp_path, "turbo.json", document(BASE_RUNS))
    lego_runs = [run("diffusers", 20.0), run("acestep", 15.0), {"impl": "acestep-fast", "error": "boom"}]
    write(tmp_path, "lego.json", document(lego_runs, config="2b-base", task="lego", seconds=120.0, steps=50))
    # An older result for the same case is not plotted.
    write(tmp_path, "old.json", document([run("diffusers", 9.0)], date="2020-01-01T00:00:00Z"))
    docs = report.load_results([tmp_path])
    svg = report.svg_plot(docs)
    found = bars(svg)
    assert len(found) == 5  # 3 turbo runs + 2 lego runs that did not fail
    widths = {rect.findtext(f"{SVG_NS}title"): float(rect.get("width")) for rect in found}
    assert widths["diffusers: 20.0 s"] > widths["acestep: 15.0 s"] > widths["diffusers: 2.000 s"] > 0
    texts = ["".join(node.itertext()) for node in ET.fromstring(svg).iter(f"{SVG_NS}text")]
    assert "acestep-fast: failed" in texts and "1.250 s" in texts and "20.0 s" in texts
    assert any("wall time" in text for text in texts)  # the axis is labelled
    assert report.svg_plot(list(reversed(docs))) == svg


def test_svg_escapes_text() -> None:
    doc = document([run("diffusers", 1.0), run("a<b>&\"c'", 0.5)], machine={"device": 'GPU <x> & "y"'})
    root = ET.fromstring(report.svg_plot([doc]))
    texts = ["".join(node.itertext()) for node in root.iter(f"{SVG_NS}text")]
    assert 'GPU <x> & "y"' in texts and "a<b>&\"c'" in texts
    assert len(bars(report.svg_plot([doc]))) == 2


def test_number_formats() -> None:
    assert [report.fmt_seconds(v) for v in (1.234, 41.2, 0.01, 1234.5, None)] == [
        "1.234",
        "41.2",
        "0.010",
        "1234",
        "–",
    ]
    assert [report.fmt_sig(v) for v in (0.0206, 0.00012345, 1.5, 0)] == ["0.0206", "0.000123", "1.50", "0"]
    assert report.fmt_gib(8300.0) == "8.11"


def test_cli_subprocess(tmp_path: Path) -> None:
    write(tmp_path, "turbo.json", document(BASE_RUNS))
    # ``python -m bench report`` once bench/__main__.py exists; the module itself until then.
    command = (
        ["-m", "bench", "report"]
        if (REPO / "bench" / "__main__.py").exists()
        else ["-m", "bench.speed.report"]
    )
    result = subprocess.run(
        [sys.executable, *command, str(tmp_path), "--out-svg", str(tmp_path / "speed.svg")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert summary(result.stdout, TURBO_1)["acestep-fast vs diffusers"] == "1.60x"
    assert bars((tmp_path / "speed.svg").read_text())


def test_rows_merged_from_another_commit_say_so() -> None:
    merged = run("acestep-fast", 1.0, commit="0ld0ld0")
    checks = {"fast_vs_eager_rel_err": 0.01, "fast_vs_eager_tolerance": 0.05, "commit": "0ld0ld0"}
    text = report.markdown([document([run("diffusers", 2.0), merged], checks=checks)])
    assert cells(text, "acestep-fast (commit 0ld0ld0)")[5] == "2.00x"
    assert "compiled vs eager (commit 0ld0ld0): relative L2 difference 0.0100" in text


def test_the_lego_memory_goal_is_judged_on_the_t4_plan_when_it_ran() -> None:
    lego = {"config": "2b-base", "task": "lego", "seconds": 120.0, "steps": 50}
    runs = [run("diffusers", 4.0), run("acestep", 4.0, peak_allocated_mib=14000.0)]
    eager_only = report.markdown([document(runs, **lego)])
    assert summary(eager_only, LEGO_1)["≤ 8 GiB (lego)"] == "not met"
    t4 = run("acestep-t4", 6.0, precision="fp16-mixed", peak_allocated_mib=8150.0)
    assert summary(report.markdown([document([*runs, t4], **lego)]), LEGO_1)["≤ 8 GiB (lego)"] == "met"
