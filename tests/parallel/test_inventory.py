"""Device inventory: a brief measurement of this host gives a usable CPU entry, the JSON
round trip keeps every field, entries become the planner's DeviceSpec, and bad entries or
files are refused with a fix. (CUDA entries are built from the same timing helpers, which
are checked here on the CPU.)"""
import json

import pytest
import torch

from bigtrain.parallel.inventory import (DeviceInfo, copy_bandwidth, inventory, load_inventory,
                                         matmul_flops, save_inventory)
from bigtrain.plan.device import DeviceSpec

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def measured():
    return inventory(matmul_n=128, copy_mb=4, repeats=2)


def test_cpu_entry_is_measured(measured):
    cpu = measured[0]
    assert cpu.type == "cpu" and cpu.index is None and cpu.name
    assert cpu.flops > 1e8 and cpu.link_bandwidth > 1e7  # slower than this is not a computer
    assert cpu.memory_bytes > 2 ** 28 and cpu.cores >= 1 and cpu.host_bandwidth is None
    assert [d.type for d in measured] == ["cpu"] + ["cuda"] * (len(measured) - 1)


def test_json_round_trip(measured, tmp_path):
    path = tmp_path / "devices.json"
    save_inventory(measured, str(path))
    assert load_inventory(str(path)) == measured
    doc = json.loads(path.read_text())
    assert doc["devices"][0]["type"] == "cpu" and "measured_at" in doc


def test_entries_become_device_specs(measured):
    cpu = measured[0]
    spec = cpu.to_spec(ranks_per_device=2)
    assert isinstance(spec, DeviceSpec) and spec.kind == "cpu"
    assert spec.flops == pytest.approx(cpu.flops / 2)
    assert spec.memory_bytes == pytest.approx(cpu.memory_bytes / 2)
    gpu = DeviceInfo("cuda", 0, "test gpu", 80 * 2 ** 30, 5e14, "bfloat16", 2.5e10, None, 132)
    assert gpu.to_spec().host_link == 2.5e10 and gpu.to_spec().bandwidth == 2.5e10


def test_timing_helpers_measure_real_work():
    small, large = matmul_flops(CPU, torch.float32, 64, 2), matmul_flops(CPU, torch.float32, 256, 2)
    assert small > 0 and large > 0
    assert copy_bandwidth(CPU, CPU, 4, 2) > 1e7


def test_bad_entries_and_files_are_refused(tmp_path):
    with pytest.raises(ValueError, match="type"):
        DeviceInfo("tpu", 0, "x", 1, 1.0, "float32", None, None, 1)
    with pytest.raises(ValueError, match="flops"):
        DeviceInfo("cpu", None, "x", 1, 0.0, "float32", None, None, 1)
    with pytest.raises(ValueError, match="link_bandwidth"):
        DeviceInfo("cpu", None, "x", 1, 1.0, "float32", None, -1.0, 1)
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"devices": []}))
    with pytest.raises(ValueError, match="not a bigtrain device inventory"):
        load_inventory(str(other))
    other.write_text("{not json")
    with pytest.raises(ValueError, match="not JSON"):
        load_inventory(str(other))
    other.write_text(json.dumps({"format": "bigtrain-device-inventory", "version": 1,
                                 "devices": [{"type": "cpu"}]}))
    with pytest.raises(ValueError, match="lacks"):
        load_inventory(str(other))
