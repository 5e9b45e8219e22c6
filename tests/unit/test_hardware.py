"""Device profiles: names, the measured-over-datasheet rule, and picking the current one."""

import dataclasses
import json

import pytest
import torch

from ioaware.config import config
from ioaware.hardware import (
    PROFILES,
    DeviceProfile,
    dtype_key,
    get_profile,
    load_profile,
    profile_dir,
    profile_names,
    save_profile,
    saved_profile_names,
)


@pytest.fixture
def profiles_in(tmp_path, monkeypatch):
    """Saved profiles go to a fresh directory, never the user's."""
    monkeypatch.setattr(config, "profile_dir", tmp_path / "profiles")
    return tmp_path / "profiles"


def test_every_profile_is_named_by_its_key_and_hashable():
    for name, profile in PROFILES.items():
        assert profile.name == name
        assert get_profile(name) is profile
        hash(profile)  # frozen: usable as a cache key


def test_names_are_case_insensitive_and_profiles_pass_through():
    assert get_profile("H100") is PROFILES["h100"]
    assert get_profile(PROFILES["a100"]) is PROFILES["a100"]


def test_bad_name_says_which_argument_and_the_valid_names(profiles_in):
    with pytest.raises(ValueError, match=r"name='tpu'.*\['a100', 'cpu', 'h100', 'h200'\]"):
        get_profile("tpu")


def test_none_falls_back_to_the_configured_device_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(config, "default_device", "a100")
    assert get_profile(None) is PROFILES["a100"]
    monkeypatch.setattr(config, "default_device", "v100")
    with pytest.raises(ValueError, match=r"config.default_device='v100'"):
        get_profile()


@pytest.mark.parametrize(
    "device_name, expected",
    [("NVIDIA H100 80GB HBM3", "h100"), ("NVIDIA H200", "h200"),
     ("NVIDIA A100-SXM4-80GB", "a100"), ("NVIDIA GeForce RTX 4090", "cpu")],
)
def test_none_matches_the_cuda_device_name(monkeypatch, device_name, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: device_name)
    monkeypatch.setattr(config, "default_device", "cpu")  # the RTX has no profile
    assert get_profile(None).name == expected


def test_the_model_uses_measured_ceilings_where_known():
    h100, a100 = PROFILES["h100"], PROFILES["a100"]
    assert h100.peak_flops["bfloat16"] == 989.4e12  # datasheet, dense
    assert h100.peak_flops_for(torch.bfloat16) == 790e12  # measured here
    assert h100.bandwidth == 3.0e12  # measured copy, not the 3.35 TB/s datasheet
    assert h100.peak_flops_for("tf32") == 494.7e12  # not measured: datasheet
    assert a100.bandwidth == a100.hbm_bandwidth == 2.039e12  # nobody measured one
    assert PROFILES["h200"].l2 == 60 * 1000**2  # what the device reports
    assert PROFILES["h200"].l2_bytes == 50 * 1000**2


def test_dtype_keys_accept_torch_dtypes_and_short_names():
    assert dtype_key(torch.float16) == dtype_key("fp16") == dtype_key("torch.float16") == "float16"
    assert dtype_key("bf16") == "bfloat16"
    with pytest.raises(ValueError, match="dtype='int4'"):
        PROFILES["h100"].peak_flops_for("int4")


def test_hopper_sram_and_sm_counts():
    h100 = PROFILES["h100"]
    assert (h100.num_sms, h100.sram_per_sm, h100.sram_per_block) == (132, 228 * 1024, 227 * 1024)
    assert isinstance(h100, DeviceProfile)


def test_every_profile_has_an_l2_and_sram_that_the_tiles_can_use():
    for profile in PROFILES.values():
        assert profile.l2 > profile.sram_per_sm * profile.num_sms / 100  # sane magnitudes
        assert 0 < profile.sram_per_block <= profile.sram_per_sm
        assert profile.l2_bandwidth is None  # nobody has measured one yet


def test_a_calibrated_profile_round_trips_through_its_file(profiles_in):
    measured = dataclasses.replace(
        PROFILES["h100"], name="ignored", measured_peak_flops={"bf16": 700e12},
        measured_hbm_bandwidth=2.9e12, l2_bandwidth=7.0e12, note="calibrated",
        memory_latency=1.5e-6, kernel_efficiency={"selective_scan": 0.4},
    )
    path = save_profile(measured, "H100-Lab")
    assert path == profiles_in / "h100-lab.json" and path.is_file()
    assert profile_dir() == profiles_in
    loaded = get_profile("h100-lab")
    # the name is the saved one; short dtype names are stored as the model's keys
    assert loaded == dataclasses.replace(measured, name="h100-lab",
                                         measured_peak_flops={"bfloat16": 700e12})
    assert loaded.peak_flops_for("bf16") == 700e12 and loaded.l2_bandwidth == 7.0e12
    assert loaded.memory_latency == 1.5e-6
    assert loaded.kernel_efficiency == {"selective_scan": 0.4}
    assert load_profile(path) == loaded
    assert saved_profile_names() == ["h100-lab"]
    assert profile_names() == ["a100", "cpu", "h100", "h200", "h100-lab"]


def test_saved_profiles_come_after_the_builtins_and_name_themselves_in_errors(profiles_in):
    with pytest.raises(ValueError, match=r"name='h100' is a built-in.*'h100-calibrated'"):
        save_profile(PROFILES["a100"], "h100")
    with pytest.raises(ValueError, match=r"name='../etc' must be"):
        save_profile(PROFILES["a100"], "../etc")
    with pytest.raises(ValueError, match=r"name='' must be"):
        save_profile(PROFILES["a100"], "")
    with pytest.raises(TypeError, match="profile must be a DeviceProfile, got dict"):
        save_profile({}, "x")
    save_profile(PROFILES["a100"], "lab")
    with pytest.raises(ValueError, match=r"name='tpu'.*saved: \['lab'\]"):
        get_profile("tpu")


def test_a_bad_profile_file_is_a_clear_error(profiles_in):
    profiles_in.mkdir(parents=True)
    (profiles_in / "broken.json").write_text("{not json")
    with pytest.raises(ValueError, match="broken.json' is not valid JSON"):
        get_profile("broken")
    good = PROFILES["h100"].to_json()
    for change, message in (
        ({"hbm_bandwidth": -1}, "hbm_bandwidth=-1 must be a positive number"),
        ({"warp_size": 32}, r"unknown fields \['warp_size'\]"),
        ({"peak_flops": {"bfloat16": "fast"}}, "peak_flops must map dtype names"),
        ({"format": 99}, "format 99 is not 1"),
        ({"memory_latency": 0}, "memory_latency=0 must be positive seconds or null"),
        ({"kernel_efficiency": {"selective_scan": -1}}, "kernel_efficiency must map"),
    ):
        (profiles_in / "bad.json").write_text(json.dumps({**good, **change}))
        with pytest.raises(ValueError, match=message):
            get_profile("bad")
    (profiles_in / "short.json").write_text(json.dumps({"name": "short"}))
    with pytest.raises(ValueError, match=r"missing fields \['peak_flops'"):
        get_profile("short")
    (profiles_in / "list.json").write_text("[]")
    with pytest.raises(ValueError, match="expected a JSON object, got list"):
        get_profile("list")
    with pytest.raises(ValueError, match="cannot read a profile"):
        load_profile(profiles_in / "absent.json")


def test_peak_rates_per_dtype():
    h100, a100 = PROFILES["h100"], PROFILES["a100"]
    # datasheet: 3,958 TFLOPS "with sparsity", half of it dense; twice bf16's rate
    assert h100.peak_flops_for(torch.float8_e4m3fn) == pytest.approx(
        2 * h100.peak_flops["bfloat16"], rel=1e-3)
    assert h100.peak_flops_for("fp8") == h100.peak_flops_for("int8") == 1978.9e12
    assert h100.peak_flops_for(torch.float64) == 66.9e12  # FP64 tensor cores
    assert a100.peak_flops_for("double") == 19.5e12 and a100.peak_flops_for("int8") == 624e12
    with pytest.raises(ValueError, match=r"dtype='fp8' has no peak rate on a100"):
        a100.peak_flops_for("fp8")  # Ampere has no FP8 tensor cores
    for profile in PROFILES.values():
        rates = profile.peak_flops
        assert rates["tf32"] >= rates["float32"] and rates["bfloat16"] >= rates["tf32"]


def test_the_h100_scan_efficiency_is_its_bench_measurement():
    # 90.6 us of modelled pipe time against 197 us measured (docs/kernels.md)
    assert PROFILES["h100"].kernel_efficiency == {"selective_scan": pytest.approx(0.4599,
                                                                                  abs=1e-4)}
    assert PROFILES["h100"].memory_latency is None  # only `ioaware calibrate` measures it
    old_file = {k: v for k, v in PROFILES["a100"].to_json().items()
                if k not in ("memory_latency", "kernel_efficiency")}
    assert DeviceProfile.from_json(old_file) == PROFILES["a100"]  # older files still load
