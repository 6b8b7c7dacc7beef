"""Helpers shared by the tabs: the handler wrapper (torch thread, error translation), the optional
ZeroGPU decorator, LaTeX Markdown, turning UI values into core arguments, and running a sampler
generator step by step."""

from __future__ import annotations

import functools
import inspect
import math
import time
from collections.abc import Callable, Iterator

import gradio as gr
import torch

from diffusion_core.checkpoints import Checkpoint
from diffusion_core.runtime import torch_thread
from diffusion_core.samplers import AutoGuided, SamplerConfig, Step, initial_noise, make_generator, sample_progressive

from .state import Registry

try:  # On a ZeroGPU Space, `spaces.GPU` attaches a GPU to the decorated call; elsewhere it is a no-op.
    import spaces  # type: ignore[import-not-found]

    GPU: Callable = spaces.GPU
except ImportError:

    def GPU(fn: Callable) -> Callable:  # noqa: N802 - mirrors spaces.GPU
        return fn


LATEX = [{"left": "$$", "right": "$$", "display": True}, {"left": "$", "right": "$", "display": False}]
ANY_DIGIT = "any"
SAMPLING = dict(concurrency_id="sampling", concurrency_limit=1)  # CPU-bound work: one run at a time
LIGHT = dict(concurrency_id="light", concurrency_limit=4)  # scrubbing and small figures
# Stream at most ~10 frames per second: each streamed frame costs Gradio about 15 ms of server time (two
# PNGs, the message), which at 20 frames per second made a served DDIM-50 for 16 images 1.25x slower.
MIN_FRAME_INTERVAL_S = 1 / 10
MAX_RECORDED_FRAMES = 100  # frames of a trajectory kept for the scrub slider and the GIF
MAX_GUIDANCE = 8.0  # the guidance slider's upper end
MAX_AUTOGUIDANCE = 4.0  # the autoguidance slider's upper end
AUTOGUIDANCE_LABEL = "Autoguidance w (0 = the guide alone, 1 = the model alone)"
# The largest seed a browser sends exactly: its numbers are IEEE doubles, so 2^53 + 1 would arrive as 2^53.
# diffusion_core takes seeds up to 2^63 - 1; the app keeps to the range where the page and the API agree.
MAX_UI_SEED = 2**53 - 1


def timestep(t: int) -> str:
    """A timestep for display: the samplers' last t_prev is -1, the clean sample, shown as "clean x₀".

    The code counts t = 0..T-1 (x_t after t + 1 noising steps); Ho et al. count 1..T and call the clean image x_0.
    """
    return "clean x₀" if t < 0 else str(t)


def md(text: str, **kw: object) -> gr.Markdown:
    return gr.Markdown(text, latex_delimiters=LATEX, **kw)


def friendly(fn: Callable) -> Callable:
    """Wrap a handler (plain or generator): run it on the process's torch thread, and turn the core's
    ValueErrors (bad settings) into gr.Error.

    Gradio calls handlers, and resumes streaming ones, on any of its worker threads; torch work from
    more than one OS thread slows every later forward pass 1.4x to 1.9x on a 2-core machine
    (diffusion_core.runtime.TorchThread says why), so every handler runs on the one torch thread.
    Every value that reaches a handler through the API is checked (by Gradio's component validation
    or here) and answered with a message naming it and what is allowed; the app keeps serving.
    """
    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def gen(*args, **kwargs):
            try:
                yield from torch_thread().iterate(fn(*args, **kwargs))
            except ValueError as e:
                raise gr.Error(str(e)) from None

        return gen

    @functools.wraps(fn)
    def plain(*args, **kwargs):
        try:
            return torch_thread().run(fn, *args, **kwargs)
        except ValueError as e:
            raise gr.Error(str(e)) from None

    return plain


class FrameClock:
    """Paces a stream: due() is True at most once every `interval` seconds (or when forced), then restarts."""

    def __init__(self, interval: float | None = None) -> None:
        self.interval = MIN_FRAME_INTERVAL_S if interval is None else interval  # read now: tests may change it
        self.last = -math.inf

    def due(self, force: bool = False) -> bool:
        now = time.perf_counter()
        if force or now - self.last >= self.interval:
            self.last = now
            return True
        return False


def as_int(name: str, value: object) -> int:
    """A whole number from a UI value (gr.Number may send 3.0), or ValueError. An int passes exactly."""
    if isinstance(value, bool) or value is None:
        raise ValueError(f"{name} must be a whole number, got {value!r}")
    if isinstance(value, int):
        return value
    try:
        f = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a whole number, got {value!r}") from None
    if not f.is_integer():
        raise ValueError(f"{name} must be a whole number, got {value!r}")
    return int(f)


def seed_box(label: str) -> gr.Number:
    """A seed field: whole numbers 0..MAX_UI_SEED, starting at 0."""
    return gr.Number(0, precision=0, minimum=0, maximum=MAX_UI_SEED, label=label)


def as_float(name: str, value: object, lo: float, hi: float) -> float:
    """A finite number in [lo, hi] from a UI value, or ValueError."""
    try:
        f = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number in [{lo:g}, {hi:g}], got {value!r}") from None
    if isinstance(value, bool) or not math.isfinite(f) or not lo <= f <= hi:
        raise ValueError(f"{name} must be a number in [{lo:g}, {hi:g}], got {value!r}")
    return f


def labels_for(ckpt: Checkpoint, digit: str | None, num: int) -> torch.Tensor | None:
    """Class labels for a conditional model ("any" = the null label, i.e. unconditional); None for "any".

    A digit for an unconditional model is refused (the UI hides the choice and resets it to "any").
    """
    if _is_any(digit):
        return None
    if ckpt.model_config.num_classes == 0:
        raise ValueError(f"checkpoint {ckpt.name!r} is unconditional: it cannot be asked for digit {digit!r} "
                         f"(choose {ANY_DIGIT!r})")
    d = as_int("digit", digit)
    if not 0 <= d < ckpt.model_config.num_classes:
        raise ValueError(f"digit must lie in 0..{ckpt.model_config.num_classes - 1}, got {d}")
    return torch.full((num,), d, dtype=torch.long)


def _is_any(digit: str | None) -> bool:
    return digit in (None, "", ANY_DIGIT)


def _guidance_visible(conditional: bool, digit: str | None) -> bool:
    """Classifier-free guidance acts on a chosen digit of a class-conditional model."""
    return conditional and not _is_any(digit)


def _autoguidance(reg: Registry, name: str, digit: str | None = ANY_DIGIT) -> dict:
    """Checkpoint `name`'s autoguidance slider at its card's w: shown with a guide and digit "any", else hidden."""
    guide = reg.guides.get(name)
    return {"visible": guide is not None and _is_any(digit), "value": guide.weight if guide else 1.0}


def autoguidance_slider(reg: Registry, name: str, digit: str) -> gr.Slider:
    """The autoguidance weight, for digit "any" (unconditional sampling)."""
    return gr.Slider(0, MAX_AUTOGUIDANCE, step=0.25, label=AUTOGUIDANCE_LABEL,
                     **_autoguidance(reg, name, digit))


def guidance_slider(conditional: bool, digit: str) -> gr.Slider:
    """The classifier-free guidance scale, for a chosen digit of a class-conditional model."""
    return gr.Slider(0, MAX_GUIDANCE, value=2, step=0.5, label="Guidance scale w (chosen digit)",
                     info="1 = the model as trained, 0 = ignores the digit, above 1 = follows it more strongly",
                     visible=_guidance_visible(conditional, digit))


def default_digit(conditional: bool) -> str:
    return "3" if conditional else ANY_DIGIT


def digit_dropdown(conditional: bool) -> gr.Dropdown:
    return gr.Dropdown([ANY_DIGIT] + [str(d) for d in range(10)], value=default_digit(conditional),
                       label="Digit (class-conditional models)", visible=conditional,
                       info="'any': unconditional sampling, with autoguidance where the model has a guide")


def on_model_controls(reg: Registry, name: str, digit: str | None) -> tuple[dict, dict, dict]:
    """(digit, guidance, autoguidance) updates on choosing checkpoint `name`: a class-conditional model keeps
    the digit and shows the guidance scale for a chosen digit; an unconditional one gets digit "any" (it has
    no labels); the autoguidance slider shows for a model with a guide and digit "any", at its card's w."""
    conditional = reg.get(name).model_config.num_classes > 0
    if not conditional:
        digit = ANY_DIGIT
    return (gr.update(visible=conditional) if conditional else gr.update(visible=False, value=ANY_DIGIT),
            gr.update(visible=_guidance_visible(conditional, digit)), gr.update(**_autoguidance(reg, name, digit)))


def on_digit_controls(reg: Registry, name: str, digit: str | None) -> tuple[dict, dict]:
    """(guidance, autoguidance) visibility on choosing a digit: the guidance scale acts on a chosen digit,
    autoguidance on "any"; the sliders keep their values."""
    conditional = reg.get(name).model_config.num_classes > 0
    return (gr.update(visible=_guidance_visible(conditional, digit)),
            gr.update(visible=_autoguidance(reg, name, digit)["visible"]))


def check_num(num: object) -> int:
    n = as_int("number of images", num)
    if not 1 <= n <= 16:
        raise ValueError(f"number of images must lie in 1..16, got {n}")
    return n


def start(
    ckpt: Checkpoint, config: SamplerConfig, seed: object, num: object, digit: str | None, device: torch.device,
    guide: torch.nn.Module | None = None, autoguidance: object = 1.0,
) -> Iterator[Step]:
    """A sampler generator from seed: x_T = initial_noise(make_generator(seed)), later draws from the same generator.

    The same seed gives every sampler (and `diffusion_core.sample`) the same x_T. With a `guide` and
    autoguidance w != 1, unconditional samples (digit "any") are autoguided (w = 0: the guide's own samples);
    a chosen digit is not.
    """
    config.check_steps(ckpt.schedule.num_timesteps)
    n = check_num(num)
    w = as_float("autoguidance weight", autoguidance, 0, MAX_AUTOGUIDANCE)
    g = make_generator(as_int("seed", seed))
    y = labels_for(ckpt, digit, n)
    c, s = ckpt.model_config.in_channels, ckpt.model_config.image_size
    x_T = initial_noise((n, c, s, s), g, device)
    model = ckpt.model
    if y is None and guide is not None and w != 1.0:
        model = AutoGuided(model, guide, w)
    return inference_steps(sample_progressive(model, ckpt.schedule, x_T, config, None if y is None else y.to(device), g))


def inference_steps(gen: Iterator[Step]) -> Iterator[Step]:
    """Advance `gen` one step at a time under torch.inference_mode.

    Grad mode is thread-local and a generator may be resumed on another thread (the app resumes
    its handlers on the torch thread, tests and scripts on theirs), so the mode is entered around
    each step rather than around the loop. Closing this closes `gen`, which stops the computation.
    """
    try:
        while True:
            with torch.inference_mode():
                step = next(gen, None)
            if step is None:
                return
            yield step
    finally:
        gen.close()  # type: ignore[attr-defined]


def _atomic_save_pil_to_cache(img, cache_dir: str, name: str = "image", format: str = "webp") -> str:
    """gradio.processing_utils.save_pil_to_cache, but race-free.

    Gradio 6.31.0 names a cached image by the hash of its bytes and rewrites that file in place on
    every call, so when two visitors get the same picture at once (the same example at the same t,
    the same seed) one may download it while the other truncates it: the client sees "peer closed
    connection" (bench/load.py found 40 of 300 scrubs failing). Here an existing file is reused and a
    new one is written under a temporary name and renamed into place, as Gradio already does for files.
    """
    import os
    import tempfile
    from pathlib import Path

    from gradio import processing_utils as pu

    data = pu.encode_pil_to_bytes(img, format)
    d = Path(cache_dir) / pu.hash_bytes(data)
    d.mkdir(exist_ok=True, parents=True)
    path = (d / f"{name}.{format}").resolve()
    if path.exists() and path.stat().st_size == len(data):
        os.utime(path)  # delete_cache ages files by ctime: keep a reused copy alive
        return str(path)
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp-")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
    return str(path)


def patch_gradio_image_cache() -> None:
    """Install _atomic_save_pil_to_cache (every Gradio caller looks it up on the module at call time)."""
    from gradio import processing_utils as pu

    if pu.save_pil_to_cache is not _atomic_save_pil_to_cache:
        pu.save_pil_to_cache = _atomic_save_pil_to_cache


patch_gradio_image_cache()
