"""diffusion_core.allocator: a command re-executes itself once with tcmalloc or jemalloc preloaded."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from diffusion_core import allocator
from diffusion_core.allocator import ENV, environ_before_reexec, find_fast_malloc

ROOT = Path(__file__).resolve().parents[1]
FAST = find_fast_malloc() if sys.platform.startswith("linux") else None
# CI installs libtcmalloc-minimal4 (.ci/run), so there the re-execution must be tested, never skipped.
needs_fast = pytest.mark.skipif(FAST is None and not os.environ.get("CI"), reason="no tcmalloc or jemalloc here")

SCRIPT = """
import sys
from diffusion_core.allocator import loaded_malloc, reexec_with_fast_malloc
print("start", sys.argv[1:], flush=True)
reexec_with_fast_malloc()
import torch  # after the choice, as in app.py
x = torch.ones(3)
print("malloc", loaded_malloc(), sys.argv[1:], float(x.sum()))
"""


def shell_env(**env: str) -> dict[str, str]:
    """The environment a command gets from a user's shell: no malloc chosen yet, none asked for."""
    return {k: v for k, v in environ_before_reexec().items() if k != ENV} | {"PYTHONPATH": str(ROOT)} | env


def run_script(tmp_path: Path, **env: str) -> list[str]:
    script = tmp_path / "cmd.py"
    script.write_text(SCRIPT)
    out = subprocess.run([sys.executable, str(script), "a b", "--flag"], cwd=ROOT, capture_output=True, text=True,
                         env=shell_env(**env), timeout=120, check=True).stdout
    return out.splitlines()


def test_importing_the_package_and_allocator_imports_no_torch() -> None:
    code = "import sys, diffusion_core, diffusion_core.allocator; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    import diffusion_core  # the package's names still resolve, on first use
    from diffusion_core.forward import q_sample

    assert diffusion_core.q_sample is q_sample and "q_sample" in dir(diffusion_core)
    with pytest.raises(AttributeError, match="no attribute 'q_smaple'"):
        diffusion_core.q_smaple  # noqa: B018


def test_choices(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert find_fast_malloc("system") is None
    assert find_fast_malloc("/opt/lib/libmine.so") == "/opt/lib/libmine.so"
    monkeypatch.setattr(allocator, "_library_dirs", lambda: [tmp_path / "lib", tmp_path / "lib64"])
    assert find_fast_malloc() is None
    (tmp_path / "lib64").mkdir()
    (tmp_path / "lib64" / "libjemalloc.so.2").write_bytes(b"")
    assert find_fast_malloc() == str(tmp_path / "lib64" / "libjemalloc.so.2")  # jemalloc when tcmalloc is absent
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "libtcmalloc_minimal.so.4").write_bytes(b"")
    assert find_fast_malloc() == str(tmp_path / "lib" / "libtcmalloc_minimal.so.4")  # tcmalloc first


@needs_fast
def test_a_command_reexecutes_once_with_the_fast_malloc(tmp_path: Path) -> None:
    lines = run_script(tmp_path)
    # "start" twice: the command ran again, with its arguments, and only once more; the mapped file is
    # the soname's target (libtcmalloc_minimal.so.4 -> libtcmalloc_minimal.so.4.5.10).
    assert lines[:2] == ["start ['a b', '--flag']"] * 2 and len(lines) == 3, lines
    malloc, file, rest = lines[2].split(" ", 2)
    assert malloc == "malloc" and file.startswith(Path(FAST).name) and rest == "['a b', '--flag'] 3.0"


@pytest.mark.skipif(FAST is None or not Path(FAST.replace("minimal", "minimal_debug")).is_file(),
                    reason="no tcmalloc debug build beside tcmalloc (Debian's libtcmalloc-minimal4 has one)")
def test_a_library_named_by_path_is_preloaded_and_named(tmp_path: Path) -> None:
    debug = FAST.replace("minimal", "minimal_debug")  # not one of FAST_MALLOCS: found through the request
    lines = run_script(tmp_path, **{ENV: debug})
    assert lines[:2] == ["start ['a b', '--flag']"] * 2 and lines[2].startswith(f"malloc {Path(debug).name}"), lines


def test_system_keeps_the_c_librarys_malloc(tmp_path: Path) -> None:
    assert run_script(tmp_path, **{ENV: "system"}) == ["start ['a b', '--flag']", "malloc system ['a b', '--flag'] 3.0"]


def test_a_library_the_loader_refuses_does_not_loop(tmp_path: Path) -> None:
    lines = run_script(tmp_path, **{ENV: str(tmp_path / "libmissing.so")})
    assert lines == ["start ['a b', '--flag']"] * 2 + ["malloc system ['a b', '--flag'] 3.0"]


@needs_fast
def test_the_sample_command_runs_on_the_fast_malloc(tiny_checkpoint: Path, tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "diffusion_core.sample", "--checkpoint", str(tiny_checkpoint), "--steps", "2",
           "--num", "1", "--device", "cpu", "--out", str(tmp_path / "a.png")]
    fast = subprocess.run(cmd, cwd=ROOT, env=shell_env(), capture_output=True, text=True, timeout=300, check=True)
    assert f"malloc {Path(FAST).name}" in fast.stderr, fast.stderr
    glibc = subprocess.run(cmd, cwd=ROOT, env=shell_env(**{ENV: "system"}), capture_output=True, text=True,
                           timeout=300, check=True)
    assert "malloc system)" in glibc.stderr, glibc.stderr


@needs_fast
def test_the_app_serves_on_the_fast_malloc(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = shell_env(GRADIO_SERVER_PORT=str(port), EXPLORER_COMPILED="0", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        lines, deadline = [], time.monotonic() + 120
        while time.monotonic() < deadline and (line := proc.stdout.readline()):
            lines.append(line.strip())
            if "Running on" in line:
                break
        assert any(line.startswith(f"* malloc: {Path(FAST).name}") for line in lines), lines
        assert any("Running on" in line for line in lines), lines
    finally:
        proc.kill()
        proc.wait(timeout=30)
