"""diffusion_core.runtime.TorchThread: one OS thread for a process's torch work."""

from __future__ import annotations

import os
import threading
import time

import pytest
import torch

from diffusion_core.runtime import TorchThread, set_threads, torch_thread


@pytest.fixture()
def tt():
    t = TorchThread("test-torch")
    yield t
    t._pool.shutdown(wait=True)


def test_run_returns_on_one_other_thread(tt: TorchThread) -> None:
    idents = {tt.run(threading.get_ident) for _ in range(5)}
    assert idents == {tt.ident} and tt.ident != threading.get_ident()
    assert tt.run(lambda a, b=0: a + b, 2, b=3) == 5


def test_run_propagates_exceptions(tt: TorchThread) -> None:
    def bad() -> None:
        raise ValueError("bad setting")

    with pytest.raises(ValueError, match="bad setting"):
        tt.run(bad)
    assert tt.run(lambda: 1) == 1  # the thread survives


def test_nested_run_does_not_deadlock(tt: TorchThread) -> None:
    assert tt.run(lambda: tt.run(threading.get_ident)) == tt.ident


def test_iterate_advances_on_the_thread_and_closes_there(tt: TorchThread) -> None:
    seen: list[int] = []
    closed_on: list[int] = []

    def gen():
        try:
            for i in range(10):
                seen.append(threading.get_ident())
                yield i
        finally:
            closed_on.append(threading.get_ident())

    assert list(tt.iterate(gen())) == list(range(10))
    assert set(seen) == set(closed_on) == {tt.ident}

    seen.clear()
    closed_on.clear()
    it = tt.iterate(gen())
    assert [next(it), next(it)] == [0, 1]
    it.close()  # a consumer that stops early (Gradio's Stop) closes the generator on the torch thread
    assert len(seen) == 2 and closed_on == [tt.ident]


def test_iterate_propagates_exceptions(tt: TorchThread) -> None:
    def gen():
        yield 1
        raise ValueError("mid-run")

    it = tt.iterate(gen())
    assert next(it) == 1
    with pytest.raises(ValueError, match="mid-run"):
        next(it)


def test_confine_others_leaves_the_torch_thread_its_pool(tt: TorchThread) -> None:
    before = torch.get_num_threads()
    try:
        assert tt.run(set_threads, 2) == 2
        tt.confine_others()
        assert torch.get_num_threads() == 1  # the calling thread
        later: list[int] = []
        t = threading.Thread(target=lambda: later.append(torch.get_num_threads()))
        t.start(), t.join()
        assert later == [1]  # threads started afterwards
        assert tt.run(torch.get_num_threads) == 2  # the torch thread keeps its pool
        tt.run(tt.confine_others)  # a no-op on the torch thread itself
        assert tt.run(torch.get_num_threads) == 2
    finally:
        torch.set_num_threads(before)


def test_torch_thread_is_one_per_process() -> None:
    assert torch_thread() is torch_thread()


def test_a_forked_child_gets_its_own_torch_thread(tt: TorchThread) -> None:
    """Threads do not survive fork(); without a new one, the child's first call would wait forever."""
    before = torch.get_num_threads()
    try:
        tt.run(set_threads, 2)
        tt.confine_others()
        parent_ident = tt.ident
        pid = os.fork()
        if pid == 0:  # the child: report through the exit code, never return into pytest
            code = 1
            try:
                ok = tt.run(threading.get_ident) != threading.get_ident() and tt.run(torch.get_num_threads) == 2
                code = 0 if ok else 2
            finally:
                os._exit(code)
        deadline = time.time() + 30
        while time.time() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            time.sleep(0.05)
        else:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            pytest.fail("the forked child's TorchThread did not answer")
        assert os.waitstatus_to_exitcode(status) == 0
        assert tt.ident == parent_ident  # the parent's thread is untouched
    finally:
        torch.set_num_threads(before)
