"""The guard on upgrades: the installed versions are the ones this package was built for, and no
upstream function it replaces, extends, copied or relies on has changed (upstream.py)."""

from __future__ import annotations

import pytest

from apps.transport.upstream import BUILT_FOR, HOOKS, Hook, digest, drift


def test_the_installed_versions_and_every_hooked_upstream_function_are_the_ones_built_on():
    problems = drift()
    assert not problems, "upstream changed under apps/transport:\n" + "\n".join(problems)


def test_a_changed_upstream_function_is_named_with_the_code_to_re_read():
    hook = HOOKS[0]
    stale = Hook(hook.target, "0" * 16, hook.here, hook.how)
    [problem] = drift([stale], built_for={})
    assert hook.target in problem and f"apps/transport/{hook.here}" in problem


def test_another_installed_version_is_named():
    [problem] = drift([], built_for={"uvicorn": "0.0.1"})
    assert "uvicorn" in problem and "0.0.1" in problem


def test_a_function_removed_upstream_is_named():
    [problem] = drift(
        [Hook("engineio.async_socket:AsyncSocket.no_such_method", "x", "engine_socket", "")], built_for={}
    )
    assert "no_such_method is gone" in problem


@pytest.mark.parametrize("hook", HOOKS, ids=[h.target for h in HOOKS])
def test_every_hook_names_code_of_this_package(hook):
    module, _, name = hook.here.partition(".")
    imported = __import__(f"apps.transport.{module}", fromlist=["_"])
    owner = name.split(".")[0]
    assert hasattr(imported, owner), f"{hook.here} does not exist"
    assert len(digest(hook.target)) == 16


def test_the_pins_in_requirements_are_the_versions_built_for():
    from apps.transport.tests.support import REPO_ROOT

    pins = {
        line.split("==")[0].split("[")[0]: line.split("==")[1].strip()
        for line in (REPO_ROOT / "requirements.txt").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    }
    assert {name: pins.get(name) for name in BUILT_FOR} == BUILT_FOR
