"""Every exception of unet_jax and data_prep is defined in unet_jax.errors under
`UnetJaxError`, and main.py prints any of them as one line and exits with 2."""

import importlib
import inspect
import pkgutil
import types

import pytest

import data_prep
import unet_jax
from configs import default
from unet_jax import errors


def _exception_classes():
    """The exception classes defined in any module of the two packages, each
    module imported, so that a class added anywhere is found."""
    found = set()
    for package in (unet_jax, data_prep):
        for info in pkgutil.walk_packages(package.__path__, f"{package.__name__}."):
            module = importlib.import_module(info.name)
            found |= {c for _, c in inspect.getmembers(module, inspect.isclass)
                      if issubclass(c, BaseException) and c.__module__ == module.__name__}
    return found


ERRORS = sorted((c for _, c in inspect.getmembers(errors, inspect.isclass) if issubclass(c, BaseException)),
                key=lambda c: c.__name__)


def test_every_exception_is_defined_in_errors_under_the_one_base():
    found = _exception_classes()
    assert {c.__name__ for c in found} >= {"ConfigError", "DataError", "RecordError", "SaveError", "Diverged",
                                           "Damaged"}
    assert [f"{c.__module__}.{c.__name__}" for c in found if c.__module__ != "unet_jax.errors"] == []
    assert [c.__name__ for c in found if not issubclass(c, errors.UnetJaxError)] == []


def test_the_errors_keep_the_builtin_bases_callers_catch():
    assert issubclass(errors.ConfigError, ValueError) and issubclass(errors.SaveError, OSError)
    assert issubclass(errors.Diverged, RuntimeError) and issubclass(errors.RecordError, errors.DataError)


@pytest.mark.parametrize("mode", ["train", "predict"])
@pytest.mark.parametrize("error", ERRORS, ids=lambda c: c.__name__)
def test_main_prints_any_of_them_in_one_line_and_exits_2(error, mode, monkeypatch, capsys, tmp_path):
    from unet_jax import main

    message = f"{tmp_path}/x: what went wrong; the fix"

    def fail(*args):
        raise error(message)

    monkeypatch.setattr(main.train, "train_and_evaluate", fail)
    monkeypatch.setattr(main.predict_cli, "run_from_flags", fail)
    monkeypatch.setattr(main, "FLAGS", types.SimpleNamespace(
        mode=mode, config=default.get_config() if mode == "train" else None, workdir=str(tmp_path), data_dir=None,
        split="test"))
    with pytest.raises(SystemExit) as stopped:
        main.main(["main"])
    assert stopped.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == f"error: {message}"
