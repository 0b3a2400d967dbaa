"""The planner on devices of different speeds: per-rank specs (given, or from a device
inventory), evenly split strategies at the slowest rank's speed, the speed-aware split
estimated beside them, and the CLI's --inventory / --device-kind."""
import json

import pytest

from bigtrain.cli.main import main
from bigtrain.parallel.inventory import DeviceInfo, rank_specs, save_inventory
from bigtrain.plan import DeviceSpec, plan
from bigtrain.plan.cost import training_flops
from tests.plan.models import mlp

FAST = DeviceSpec("cuda", 80e9, 300e12, 100e9, 20e9)
SLOW = DeviceSpec("cuda", 40e9, 100e12, 100e9, 20e9)


def _gpu(index, flops, memory):
    return DeviceInfo("cuda", index, f"gpu{index}", int(memory), flops, "bfloat16", 20e9, 100e9,
                      100)


HOST = DeviceInfo("cpu", None, "host", int(64e9), 1e12, "float32", None, 5e9, 16)


def test_even_splits_run_at_the_slowest_rank_and_the_speed_split_at_the_mean():
    p = plan(mlp(), devices=2, batch_size=64, device=[FAST, SLOW])
    total = training_flops(p.profile, 64)
    assert p.get("ddp").time.compute == pytest.approx(total / 2 / SLOW.flops)
    balanced = p.get("ddp_balanced")
    assert balanced.time.compute == pytest.approx(total / (FAST.flops + SLOW.flops))
    assert balanced.time.comm == pytest.approx(p.get("ddp").time.comm)
    assert p.usable_memory == pytest.approx(SLOW.memory_bytes * 0.9)  # the smaller device
    assert any("differ in speed" in n for n in p.notes)
    # the same devices at one speed: no speed-aware entry, nothing to balance
    even = plan(mlp(), devices=2, batch_size=64, device=[FAST, FAST])
    assert "ddp_balanced" not in {e.strategy for e in even.estimates}
    assert even.get("ddp").time.compute < p.get("ddp").time.compute


def test_a_per_rank_list_must_match_the_world_size():
    with pytest.raises(ValueError, match="one per rank"):
        plan(mlp(), devices=3, batch_size=64, device=[FAST, SLOW])


def test_rank_specs_place_ranks_on_the_inventory_devices():
    devices = [HOST, _gpu(0, 300e12, 80e9), _gpu(1, 100e12, 40e9)]
    specs = rank_specs(devices, ranks=4)  # two ranks per GPU
    assert [s.kind for s in specs] == ["cuda"] * 4
    assert [s.flops for s in specs] == [150e12, 50e12, 150e12, 50e12]
    assert specs[1].memory_bytes == 20e9
    cpu = rank_specs(devices, ranks=2, kind="cpu")
    assert cpu[0].flops == HOST.flops / 2 and cpu[0].kind == "cpu"
    with pytest.raises(ValueError, match="no CUDA device"):
        rank_specs([HOST], ranks=2, kind="cuda")


def _model_file(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("from torch import nn\n"
                 "def build():\n    return nn.Sequential(nn.Linear(100, 64), nn.ReLU(), "
                 "nn.Linear(64, 10))\n")
    return f


def test_plan_command_reads_an_inventory(tmp_path, capsys):
    inv = tmp_path / "devices.json"
    save_inventory([HOST, _gpu(0, 300e12, 80e9), _gpu(1, 100e12, 80e9)], str(inv))
    target = f"{_model_file(tmp_path)}:build"
    assert main(["plan", target, "--devices", "2", "--batch-size", "256",
                 "--inventory", str(inv)]) == 0
    out = capsys.readouterr().out
    assert "ddp_balanced" in out and "differ in speed" in out
    assert main(["plan", target, "--devices", "2", "--inventory", str(inv),
                 "--device-kind", "cpu"]) == 0
    assert "ddp_balanced" not in capsys.readouterr().out
    assert main(["plan", target, "--devices", "8", "--device-kind", "h200"]) == 0
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"format": "something else"}))
    with pytest.raises(SystemExit, match="not a bigtrain device inventory"):
        main(["plan", target, "--devices", "2", "--inventory", str(bad)])
    with pytest.raises(SystemExit, match="preset"):
        main(["plan", target, "--devices", "2", "--device-kind", "tpu"])


def test_inventory_command_measures_and_saves(tmp_path, capsys):
    out = tmp_path / "inv.json"
    assert main(["inventory", "--output", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["devices"][0]["type"] == "cpu" and doc["devices"][0]["flops"] > 0
    assert "TFLOP/s" in capsys.readouterr().out
