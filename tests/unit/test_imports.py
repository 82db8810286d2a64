"""Every module of the package imports, with the vLLM build installed (`make check-gpu-build` runs this under
vLLM's CUDA wheel too): a module that reaches into a vLLM internal the other build lacks fails here, not at a
replica's start."""

import importlib
import pkgutil

import pytest

import serve_app

pytestmark = [pytest.mark.unit, pytest.mark.vllm]

MODULES = sorted(m.name for m in pkgutil.walk_packages(serve_app.__path__, "serve_app."))


@pytest.mark.parametrize("name", MODULES)
def test_module_imports(name):
    importlib.import_module(name)
