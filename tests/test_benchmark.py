"""Speed figures: hand-counted parameters and multiply-adds, timings of a model of known speed,
the profile schema, and records written atomically."""

import json
import os
import time

import pytest
import torch
from fastreid.modeling import build_model
from torch import nn

from kdreid import benchmark
from kdreid.benchmark import (
    count_macs,
    count_parameters,
    format_record,
    measure_latency,
    measure_throughput,
    profile_model,
    read_records,
    write_record,
)
from kdreid.config import get_cfg, merge_from_file
from tests.conftest import REPO


class Sleeper(nn.Module):
    """Takes 10 ms per forward pass, whatever the input."""

    def forward(self, x):
        time.sleep(0.010)
        return x


class InPlaceNormaliser(nn.Module):
    """Normalises its input in place, as FastReID's ``Baseline.preprocess_image`` does, and
    remembers the largest value it saw."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, x):
        self.seen.append(x.max().item())
        return x.sub_(100.0).div_(50.0)


def test_count_parameters_hand_count():
    """Linear(4, 3): 4*3 + 3 = 15; BatchNorm1d(3): weight and bias, 6 (running stats are buffers);
    Linear(3, 2, bias=False): 6. Total 27; a shared layer counts once."""
    model = nn.Sequential(
        nn.Linear(4, 3), nn.BatchNorm1d(3), nn.ReLU(), nn.Linear(3, 2, bias=False)
    )
    assert count_parameters(model) == 27
    shared = nn.Linear(4, 4)
    assert count_parameters(nn.Sequential(shared, shared)) == 20


@pytest.mark.parametrize("batch", [1, 4])
def test_count_macs_conv_and_linear_per_image(batch):
    """Conv2d(3, 8, 3, padding=1) on 16x16: 8 outputs * 3*3*3 products * 256 positions = 55,296
    MACs per image; Linear(10, 5): 50. The bias additions are not multiply-adds."""
    conv = nn.Conv2d(3, 8, 3, padding=1)
    assert count_macs(conv, torch.rand(batch, 3, 16, 16)) == 8 * 3 * 9 * 256
    assert count_macs(nn.Linear(10, 5), torch.rand(batch, 10)) == 50


def test_count_macs_restores_training_flags_and_leaves_the_input_alone():
    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(), InPlaceNormaliser())
    model[1].eval()
    example = torch.full((2, 4), 200.0)
    count_macs(model, example)
    assert model.training and model[0].training and not model[1].training
    assert torch.equal(example, torch.full((2, 4), 200.0))


def _resnet18_macs(height, width):
    """FastReID's ResNet-18 (last stride 2) by hand: sum of Cin * Cout * k * k * Hout * Wout.

    Each row is (Cin, Cout, k, stride of the output map, number of such convolutions): the 7x7 stem
    at 1/2, then per stage the first block's 3x3 convolutions and 1x1 shortcut (except stage 1)
    and the second block's two 3x3 convolutions. Pooling, BN and the BNNeck add no MACs."""
    convs = [(3, 64, 7, 2, 1), (64, 64, 3, 4, 4)]
    for cin, cout, stride in ((64, 128, 8), (128, 256, 16), (256, 512, 32)):
        convs += [(cin, cout, 3, stride, 1), (cout, cout, 3, stride, 3), (cin, cout, 1, stride, 1)]
    return sum(
        cin * cout * k * k * (height // s) * (width // s) * n for cin, cout, k, s, n in convs
    )


def _tiny_baseline():
    cfg = get_cfg()
    merge_from_file(cfg, os.path.join(REPO, "configs", "Synthetic", "tiny.yml"))
    cfg.MODEL.BACKBONE.PRETRAIN = False
    cfg.MODEL.DEVICE = "cpu"
    return build_model(cfg), tuple(cfg.INPUT.SIZE_TEST)


def test_count_macs_of_a_fastreid_baseline_matches_the_hand_count():
    """The tiny config's ResNet-18 at 64x32: 74,022,912 MACs per image, at batch 1 and 2."""
    torch.manual_seed(0)
    model, (height, width) = _tiny_baseline()
    expected = _resnet18_macs(height, width)
    assert expected == 74_022_912
    assert count_macs(model, 255 * torch.rand(1, 3, height, width)) == expected
    assert count_macs(model, 255 * torch.rand(2, 3, height, width)) == expected


def test_latency_of_a_10ms_model():
    result = measure_latency(Sleeper(), torch.zeros(1), warmup=1, iters=5)
    assert result["iters"] == 5
    assert 9.5 <= result["median_ms"] <= 30.0
    assert result["median_ms"] <= result["p90_ms"] <= 60.0
    images_per_s = measure_throughput(Sleeper(), torch.zeros(8), warmup=0, iters=3)
    assert 8 / 0.030 <= images_per_s <= 8 / 0.0095


def test_time_budget_bounds_the_number_of_passes():
    """A 10 ms model with a 0.1 s budget: about 10 timed passes, never fewer than MIN_ITERS."""
    result = measure_latency(Sleeper(), torch.zeros(1), warmup=0, time_budget_s=0.1)
    assert benchmark.MIN_ITERS <= result["iters"] <= 11
    assert measure_latency(Sleeper(), torch.zeros(1), time_budget_s=0.0)["iters"] == 3


def test_every_timed_pass_sees_the_original_input():
    model = InPlaceNormaliser()
    example = torch.full((1, 4), 200.0)
    measure_latency(model, example, warmup=2, iters=3)
    assert model.seen == [200.0] * 5
    assert torch.equal(example, torch.full((1, 4), 200.0))


def test_time_calls_counts_warmups_and_holds_one_result():
    """2 warm-ups and 3 timed calls: 5 calls, 3 times; ``before`` runs before each, untimed; the
    previous result is released before the next call (at most one held)."""
    calls, alive = [], [0]

    class Result:
        def __init__(self):
            alive[0] += 1

        def __del__(self):
            alive[0] -= 1

    def fn():
        calls.append(alive[0])  # results alive while this call runs
        return Result()

    ticks = []
    times, last = benchmark.time_calls(fn, warmup=2, iters=3, before=lambda: ticks.append(1))
    assert len(times) == 3 and len(calls) == 5 == len(ticks)
    assert calls == [0] * 5 and isinstance(last, Result) and alive == [1]


def test_time_calls_measures_the_call():
    times, _ = benchmark.time_calls(lambda: time.sleep(0.01), iters=3)
    assert all(0.0095 <= t <= 0.05 for t in times)
    assert 0.0095 <= benchmark.median_seconds(lambda: time.sleep(0.01), iters=3) <= 0.05


def test_timing_validates_counts():
    with pytest.raises(ValueError, match="iters >= 1"):
        measure_latency(Sleeper(), torch.zeros(1), iters=0)


def test_profile_model_logs_each_step():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    lines = []
    record = profile_model(model, input_size=(8, 6), batch_size=4, iters=2, log=lines.append)
    assert [line.split(":")[0] for line in lines[:3]] == ["Speed 1/3", "Speed 2/3", "Speed 3/3"]
    assert len(lines) == 4 and lines[3].startswith("Speed measured in ")
    assert "3 warm-up + 2 timed passes" in lines[0] and "batch 4" in lines[1]
    assert f"latency {record['latency_ms']:.2f} ms" in lines[1] and "s at most" in lines[1]


def test_profile_model_schema():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    model.train()
    record = profile_model(model, input_size=(8, 6), device="cpu", batch_size=4, time_budget_s=0.05)
    assert set(record) == {
        "device",
        "device_name",
        "input_size",
        "params",
        "macs",
        "feature_dim",
        "latency_ms",
        "throughput",
        "throughput_batch",
        "other_cpu_load",
    }
    assert record["device"] == "cpu" and record["device_name"]
    assert record["feature_dim"] == 4
    assert record["input_size"] == [8, 6]
    assert record["params"] == 3 * 4 * 9 + 4
    assert record["macs"] == 4 * 3 * 9 * 8 * 6
    assert record["latency_ms"] > 0 and record["throughput"] > 0
    assert record["throughput_batch"] == 4
    assert model.training
    json.dumps(record)


def test_profile_of_a_fastreid_baseline():
    model, size = _tiny_baseline()
    record = profile_model(model, input_size=size, batch_size=4, warmup=1, iters=2)
    assert record["device"] == "cpu"
    assert record["macs"] == _resnet18_macs(*size)
    assert record["params"] == count_parameters(model)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_profile_model_on_cuda():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Flatten())
    record = profile_model(model, input_size=(8, 6), device="cuda", batch_size=4, iters=3)
    assert record["device"] == "cuda"
    assert record["device_name"] == torch.cuda.get_device_name()
    assert record["latency_ms"] > 0 and record["throughput"] > 0


def test_write_read_round_trip(tmp_path):
    record = {"name": "r18", "params": 11_000_000, "latency_ms": 1.5, "metrics": {"mAP": 50.0}}
    run = tmp_path / "run"
    write_record(run / benchmark.RECORD_NAME, record)
    other = tmp_path / "other.json"
    write_record(other, {"name": "lomo"})
    assert read_records([run, str(other)]) == [record, {"name": "lomo"}]
    assert read_records(run) == [record]
    assert os.listdir(run) == [benchmark.RECORD_NAME]


def test_write_record_is_atomic(tmp_path):
    """A failing write leaves the previous record and no temporary file."""
    path = tmp_path / "speed_accuracy.json"
    write_record(path, {"name": "old"})
    with pytest.raises(TypeError):
        write_record(path, {"name": "new", "bad": object()})
    assert read_records(path) == [{"name": "old"}]
    assert os.listdir(tmp_path) == ["speed_accuracy.json"]


def test_read_records_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="speed_accuracy.json"):
        read_records(tmp_path)
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="list.json"):
        read_records(tmp_path / "list.json")


def test_format_record():
    record = {
        "name": "r18",
        "dataset": "SynthReIDTiny",
        "metrics": {"mAP": 51.234, "Rank-1": 70.0},
        "params": 11_200_000,
        "macs": 74_022_912,
        "latency_ms": 3.456,
        "throughput": 123.4,
        "throughput_batch": 64,
        "device": "cpu",
        "device_name": "AMD EPYC",
    }
    text = format_record(record)
    for piece in (
        "r18 on SynthReIDTiny",
        "mAP 51.23",
        "11.200 M",
        "0.074 G",
        "3.46 ms",
        "at batch 64",
    ):
        assert piece in text
    assert "n/a" in format_record({**record, "macs": None, "latency_ms": None})
    assert "WARNING" not in text
    assert "kept 1.5 CPUs busy" in format_record({**record, "other_cpu_load": 1.5})


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="needs Linux /proc/stat")
def test_other_cpu_load_counts_other_processes_not_this_one():
    """This process spinning is not "others"; a child process spinning for the whole block is
    about one CPU of others (counted from /proc/stat, so any other load on the machine adds)."""
    import subprocess
    import sys

    with benchmark.OtherCpuLoad() as own:
        end = time.perf_counter() + 0.5
        while time.perf_counter() < end:
            pass
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)  # started
        with benchmark.OtherCpuLoad() as others:
            time.sleep(1.0)
    finally:
        busy.kill()
        busy.wait()
    assert others.cpus > 0.7
    assert own.cpus < others.cpus - 0.5


@pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="needs Linux /proc/stat")
def test_other_cpu_load_counts_waited_children_as_this_process():
    """A subprocess this process runs and waits for inside the block (a timed variant, a data
    loader's workers) is its own work, not another process's."""
    import subprocess
    import sys

    spin = "import time\nend = time.perf_counter() + 1.0\nwhile time.perf_counter() < end: pass"
    with benchmark.OtherCpuLoad() as own:
        subprocess.run([sys.executable, "-c", spin], check=True)
    assert own.cpus < 0.5
