"""tensorai-sim end to end: the built-in synthetic run, JSON schema, --stream / --node-order, errors."""

from __future__ import annotations

import json

import pytest

from tensorai.scheduler.sim.cli import main, parse_seeds

NODES = "sn,cpu_milli,memory_mib,gpu,model\nn0,32000,131072,2,T4\nn1,32000,131072,1,T4\nn2,96000,393216,8,G2\n"
PODS = ("name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec\n"
        "p0,1000,1024,1,500,\np1,2000,1024,1,1000,\np2,1000,1024,1,250,T4\np3,4000,1024,0,0,\n"
        "p4,1000,1024,2,1000,\np5,1000,1024,1,810,\n")


@pytest.fixture()
def trace(tmp_path):
    (tmp_path / "nodes.csv").write_text(NODES)
    (tmp_path / "pods.csv").write_text(PODS)
    return tmp_path


def test_seed_ranges_and_lists():
    assert parse_seeds("42-44") == [42, 43, 44]
    assert parse_seeds("1,5-6") == [1, 5, 6]


def test_json_has_per_seed_unallocated_at_100_and_130(trace, capsys):
    out = trace / "out.json"
    plot = trace / "out.png"
    code = main(["--nodes", str(trace / "nodes.csv"), "--pods", str(trace / "pods.csv"), "--seeds", "1-2",
                 "--policies", "bestfit,fgd,tensorai,tensorai-online", "--json", str(out), "--plot", str(plot),
                 "--no-progress"])
    assert code == 0
    document = json.loads(out.read_text())
    assert document["seeds"] == [1, 2]
    assert set(document["policies"]) == {"bestfit", "fgd", "tensorai", "tensorai-online"}
    for entry in document["policies"].values():
        assert [s["seed"] for s in entry["seeds"]] == [1, 2]
        for seed in entry["seeds"]:
            assert set(seed["unallocated_gpu_pct"]) == {"100", "130"}
            assert len(seed["curves"]["unallocated_gpu_pct"]) == 131
        assert set(entry["summary"]["unallocated_gpu_pct"]["100"]) == {"mean", "sd"}
    assert set(document["paired_vs_fgd"]) == {"bestfit", "tensorai", "tensorai-online"}
    assert plot.stat().st_size > 10_000  # a real PNG
    assert "unallocated GPU %" in capsys.readouterr().out


def test_stream_and_node_order_files_replay_an_identical_stream(trace):
    (trace / "stream.txt").write_text("p5\np0\np4\n")
    (trace / "order.txt").write_text("n2\nn1\n")
    runs = []
    for seed in ("1", "2"):
        out = trace / f"out{seed}.json"
        assert main(["--nodes", str(trace / "nodes.csv"), "--pods", str(trace / "pods.csv"), "--seeds", seed,
                     "--policies", "fgd", "--stream", str(trace / "stream.txt"), "--node-order",
                     str(trace / "order.txt"), "--json", str(out), "--no-progress"]) == 0
        seed_entry = json.loads(out.read_text())["policies"]["fgd"]["seeds"][0]
        runs.append((seed_entry["pods"], seed_entry["curves"]["unallocated_gpu_pct"]))
    assert runs[0] == runs[1]  # same stream and node order: the seed no longer matters
    assert runs[0][0] == 3


def test_bad_arguments_exit_2_with_a_message(trace, capsys):
    assert main(["--nodes", str(trace / "nodes.csv"), "--pods", str(trace / "pods.csv"), "--policies", "magic",
                 "--no-progress"]) == 2
    assert "unknown magic" in capsys.readouterr().out
    (trace / "stream.txt").write_text("nope\n")
    assert main(["--nodes", str(trace / "nodes.csv"), "--pods", str(trace / "pods.csv"), "--stream",
                 str(trace / "stream.txt"), "--no-progress"]) == 2
    assert main(["--trace-dir", str(trace / "missing"), "--no-progress"]) == 2
    assert "clusterdata" in capsys.readouterr().out


@pytest.mark.parametrize("arrive", ["-1", "0", "1.0", "nan", "inf", "11", "lots"])
def test_arrive_outside_1_3_to_10_is_one_line_and_exit_2(trace, capsys, arrive):
    """Below 1.3 the stream has no 130 % point (the report was NaN and exit 0); past 10 is a runaway replay."""
    with pytest.raises(SystemExit) as exit_info:
        main(["--nodes", str(trace / "nodes.csv"), "--pods", str(trace / "pods.csv"), "--arrive", arrive,
              "--no-progress"])
    assert exit_info.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "--arrive" in line and repr(arrive) in line and "1.3" in line


def test_arrive_at_its_bounds_replays(trace, capsys):
    for arrive in ("1.3", "10"):
        assert main(["--nodes", str(trace / "nodes.csv"), "--pods", str(trace / "pods.csv"), "--arrive", arrive,
                     "--seeds", "1", "--policies", "binpack", "--no-progress"]) == 0
    assert "nan" not in capsys.readouterr().out.lower()


def test_no_arguments_runs_the_builtin_synthetic_comparison(capsys):
    assert main([]) == 0
    output = capsys.readouterr().out
    assert "synthetic" in output
    for policy in ("random", "bestfit", "binpack", "spread", "fgd", "tensorai", "tensorai-online"):
        assert policy in output
