"""Device profiles: names, the measured-over-datasheet rule, and picking the current one."""

import pytest
import torch

from ioaware.config import config
from ioaware.hardware import PROFILES, DeviceProfile, dtype_key, get_profile


def test_every_profile_is_named_by_its_key_and_hashable():
    for name, profile in PROFILES.items():
        assert profile.name == name
        assert get_profile(name) is profile
        hash(profile)  # frozen: usable as a cache key


def test_names_are_case_insensitive_and_profiles_pass_through():
    assert get_profile("H100") is PROFILES["h100"]
    assert get_profile(PROFILES["a100"]) is PROFILES["a100"]


def test_bad_name_says_which_argument_and_the_valid_names():
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
    with pytest.raises(ValueError, match="dtype='int8'"):
        PROFILES["h100"].peak_flops_for("int8")


def test_hopper_sram_and_sm_counts():
    h100 = PROFILES["h100"]
    assert (h100.num_sms, h100.sram_per_sm, h100.sram_per_block) == (132, 228 * 1024, 227 * 1024)
    assert isinstance(h100, DeviceProfile)
