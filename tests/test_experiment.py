"""The training harness raises exceptions; only scripts exit."""

import argparse

import pytest
import torch

from graphattn.train.experiment import device_argument, resolve_device


def test_resolve_device_raises_instead_of_exiting():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    with pytest.raises(ValueError, match="not a device"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU is available here"):
            resolve_device("cuda")


def test_device_argument_reports_through_argparse(capsys):
    parser = argparse.ArgumentParser(prog="x")
    parser.add_argument("--device", type=device_argument, default="cpu")
    assert parser.parse_args([]).device == torch.device("cpu")
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args(["--device", "gpu0"])
    assert exit_info.value.code == 2 and "argument --device: 'gpu0' is not a device" in capsys.readouterr().err
