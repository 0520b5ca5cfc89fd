"""Every pipeline exception survives pickle with its message and typed fields (Ray moves them)."""

from __future__ import annotations

import inspect
import pickle

import pytest

from pipeline import errors

ALL = [getattr(errors, name) for name in errors.__all__]


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.__name__)
def test_each_exception_round_trips_through_pickle_with_its_fields(cls: type[errors.PipelineError]) -> None:
    params = inspect.signature(cls.__init__).parameters
    fields = {}
    for name, p in params.items():
        if p.kind is inspect.Parameter.KEYWORD_ONLY:
            fields[name] = 7 if p.annotation in ("int | None", "int") else f"v-{name}"
    exc = cls("something named `x` failed", **fields)
    back = pickle.loads(pickle.dumps(exc))
    assert type(back) is cls
    assert str(back) == "something named `x` failed"
    for name, value in fields.items():
        assert getattr(back, name) == value


def test_names_are_unique_across_the_project_and_do_not_shadow_pydantic() -> None:
    from kuberay import errors as kerrors

    ours = set(errors.__all__)
    assert not ours & set(kerrors.__all__)
    assert "ValidationError" not in ours


def test_every_exception_descends_from_the_root() -> None:
    assert all(issubclass(cls, errors.PipelineError) for cls in ALL)
