"""Measured latency of a model's prunable layers, as a lookup table.

`profile` times every prunable layer alone, rebuilt at a ladder of input and
output widths, through the runtime the model is deployed with (LiteRT, or the
compiled Keras model), on this machine, and returns a `LatencyTable`. The
predicted latency of a pruned model is `offset + scale * S`, `S` the sum of its
layers' entries at their live widths (bilinear between ladder points, in steps), with
`offset` and `scale` fitted (least squares) to whole models measured in the same
run, in turn call by call: the dense model and compact copies with every prunable
family cut to 3/4, 1/2, 3/8 and 1/4 of its width (they absorb what single layers
timed alone miss: element-wise ops, adds, pooling, the runtime's per-layer
overhead). A layer's time moves in steps of its output width (a runtime computes
channels in tiles: LiteRT on this project's x86 machine ran LeNet's conv2 at 40
filters as slowly as at 64), so each laddered layer is also timed at every
multiple of `round_to` at its full input width, and the table follows those steps
between ladder points. The table is JSON (`save`, `load`) and reusable;
`prune(..., metric="latency")` and `SparsityMonitor(metric="latency")` prune to it.

Example:

>>> import keras, keras_gss as gss
>>> model = keras.Sequential([keras.Input((16,)), keras.layers.Dense(64),
...                           keras.layers.Dense(2)])
>>> table = gss.latency.profile(model, batch_size=8, runtime="keras", repeats=3, verbose=0)
>>> table.predict(model) > 0
True
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import logging
import math
import os
import tempfile
import time
import warnings
import weakref
from pathlib import Path

import keras
import numpy as np

from keras_gss import dependency, graph
from keras_gss._validate import int_at_least, non_negative

RUNTIMES = ("litert", "keras")
LADDER = (0.125, 0.25, 0.5, 0.75, 1.0)
CALIBRATION = (0.75, 0.5, 0.375, 0.25)  # widths of the whole models timed for the fit
# A timed sample repeats a faster call back to back until it lasts this long: timed
# one call per sample in turn with other models, two compact models of the same widths
# measured up to 58 % apart (benchmarks/probes/probe_identical_copies.py), 1-3 % so
MIN_SAMPLE_MS = 5.0
# `profile(steps=True)` times a layer at this many widths between its ladder's ends at most
MAX_STEPS = 64


@dataclasses.dataclass
class LatencyTable:
    """Per-layer latency (ms per batch) at a ladder of widths, and the rest of the model.

    `entries[key]` holds `{"in": widths, "out": widths, "ms": grid, "multiplier": m}`
    (`grid[a][b]`: input width `in[a]`, output width `out[b]`; one row when the
    input width is fixed; a depthwise layer (m >= 1) is timed at its input width,
    which is its output width over m); `entries[key]["steps"]`, where present,
    `{"out": widths, "ms": ms}` at every multiple of the rounding between the
    smallest and largest output width, timed in turn at the full input width: the
    grid is scaled by its shape between ladder points. `layers[name]` lists the
    entry keys of its calls and `full[name]` its dense `[in, out]` widths.
    """

    batch_size: int
    runtime: str
    threads: int | None
    dense_ms: float
    entries: dict
    layers: dict
    full: dict
    calibration: dict  # {"sum": [S dense, S half, ...], "ms": [dense ms, half ms, ...]}
    min_sample_ms: float = 0.0  # how it was timed (`compare_ms`); 0 in tables saved before

    # -- lookups -----------------------------------------------------------

    def layer_ms(self, name: str, cin: float, cout: float) -> float:
        """Latency of layer `name` at `cin` live inputs and `cout` live outputs."""
        if name not in self.layers:
            raise ValueError(
                f"Layer '{name}' is not in this latency table (it holds {sorted(self.layers)}): "
                "profile this model again with keras_gss.latency.profile."
            )
        return sum(_lookup(self.entries[key], cin, cout) for key in self.layers[name])

    @property
    def fit(self) -> tuple[float, float]:
        """`(offset, scale)`: predicted ms = offset + scale * (sum of the entries)."""
        sums = np.asarray(self.calibration["sum"], dtype=float)
        ms = np.asarray(self.calibration["ms"], dtype=float)
        s0, m0 = sums[0], ms[0]
        if sums.size < 2 or s0 - sums[1:].min() <= 0.05 * s0 or ms[1:].max() >= m0:
            # nothing prunable, or timings that width barely moves (overhead-bound,
            # noise): latency taken as proportional to the layers' entries
            return 0.0, m0 / s0 if s0 > 0 else 1.0
        scale, offset = np.polyfit(sums, ms, 1)
        return float(offset), float(scale)

    def cost(self, infos: list[graph.LayerInfo]):
        """`(cost, offset)`: `cost(k, cin, cout)` the predicted ms charged to `infos[k]`
        at those live widths; `offset` the part charged to no layer."""
        for info in infos:
            self.layer_ms(info.layer.name, 1, 1)  # unknown layers are named now
        offset, scale = self.fit

        def cost(k: int, cin: float | None, cout: float) -> float:
            name = infos[k].layer.name
            return scale * self.layer_ms(name, self.full[name][0] if cin is None else cin, cout)

        return cost, offset

    def widths(self, infos: list[graph.LayerInfo], dead: np.ndarray) -> list[tuple]:
        """`(cin, cout)` live widths of every layer once the coupled groups `dead` go."""
        out = []
        for info in infos:
            cin, cout = self.full[info.layer.name]
            out.append((cin * info.in_fraction(dead), cout * info.out_fraction(dead)))
        return out

    def priced(self, infos: list[graph.LayerInfo], dead: np.ndarray):
        """`(cost, widths, total)` once the coupled groups `dead` are removed: the cost
        function of `cost`, every layer's live `(cin, cout)` and the predicted ms per
        batch they sum to (with the offset)."""
        cost, offset = self.cost(infos)
        widths = self.widths(infos, dead)
        return cost, widths, float(offset + sum(cost(k, *w) for k, w in enumerate(widths)))

    def predict_infos(self, infos: list[graph.LayerInfo], dead: np.ndarray) -> float:
        """Predicted ms per batch once the coupled groups `dead` are removed."""
        return self.priced(infos, dead)[2]

    def predict(self, model: keras.Model) -> float:
        """Predicted ms per batch of `model` with its zero groups removed (as `compact` does)."""
        from keras_gss.pruning import dead_now

        infos = graph.describe(model)
        return self.predict_infos(infos, dead_now(infos))

    def fraction_for(self, ms: float) -> float:
        """The `target_sparsity` (share of latency removed) that reaches `ms` per batch."""
        if not (math.isfinite(ms) and 0 < ms <= self.dense_ms):
            raise ValueError(
                f"Invalid value for `ms`: {ms!r}. Expected a latency in (0, {self.dense_ms:.4g}] "
                "ms, the dense model's."
            )
        return 1.0 - ms / self.dense_ms

    # -- saving ------------------------------------------------------------

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> LatencyTable:
        names = {f.name for f in dataclasses.fields(cls)}
        if not isinstance(data, dict) or set(data) not in (names, names - {"min_sample_ms"}):
            raise ValueError(f"Not a keras-gss latency table: expected the keys {sorted(names)}.")
        return cls(**data)

    def save(self, path: str | os.PathLike) -> None:
        """Write the table as JSON."""
        Path(path).write_text(json.dumps(self.to_dict(), indent=1))

    @classmethod
    def load(cls, path: str | os.PathLike) -> LatencyTable:
        """Read a table written by `save`."""
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise ValueError(f"Cannot read a latency table from '{path}': {error}") from error
        return cls.from_dict(data)


def _interp(xs, ys, x: float) -> float:
    """Piecewise linear in `xs`. Below the smallest width the line through the two
    smallest widths goes on (a layer's fixed cost stays), but never below
    proportional to the width; with one width, proportional."""
    if x <= 0:
        return 0.0
    if x >= xs[0]:
        return float(np.interp(x, xs, ys))
    proportional = float(ys[0]) * x / xs[0]
    if len(xs) < 2:
        return proportional
    slope = (float(ys[1]) - float(ys[0])) / (xs[1] - xs[0])
    return max(proportional, float(ys[0]) - slope * (xs[0] - x))


def _lookup(entry: dict, cin: float, cout: float) -> float:
    grid = entry["ms"]
    # depthwise: its input channels are its groups / m
    width = cout / entry["multiplier"] if entry["multiplier"] else cout
    if entry["multiplier"] or len(grid) == 1:  # or the input width is fixed (pinned)
        ms = _interp(entry["out"], grid[0], width)
    else:
        ms = _interp(entry["in"], [_interp(entry["out"], row, cout) for row in grid], cin)
    return ms * _step(entry, width)


def _step(entry: dict, width: float) -> float:
    """The factor that puts an entry's steps between its ladder points: the time
    timed at `width` over the line through the times at the ladder points around
    it (1 at a ladder point, and outside the widths timed)."""
    steps = entry.get("steps")
    if not steps or not steps["out"][0] <= width <= steps["out"][-1]:
        return 1.0
    widths, ms = steps["out"], steps["ms"]
    ladder = [w for w in entry["out"] if widths[0] <= w <= widths[-1]]
    line = float(np.interp(width, ladder, np.interp(ladder, widths, ms)))
    return float(np.interp(width, widths, ms)) / line if line > 0 else 1.0


def _ladder(full: int, fractions, round_to: int) -> list[int]:
    widths = {max(1, min(full, round_to * math.ceil(f * full / round_to))) for f in fractions}
    return sorted(widths | {full})


# -- timing (backend-specific parts isolated here) ----------------------------


_EXPORTS: collections.OrderedDict = collections.OrderedDict()  # the last few, reused
_EXPORTS_KEPT = 4


def _litert_call(model: keras.Model, threads: int | None):
    """`call(x)` running `model` exported to LiteRT. The export (seconds) is reused
    while the same model object holds the same architecture and weights."""
    if keras.backend.backend() != "tensorflow":  # before any work on the model
        raise ValueError(
            "runtime='litert' exports through the TensorFlow backend: set "
            "KERAS_BACKEND=tensorflow, or use runtime='keras'."
        )
    stamp = _stamp(model)
    key = (id(model), threads)
    kept = _EXPORTS.get(key)
    if kept is not None and kept[0]() is model and stamp is not None and kept[1] == stamp:
        _EXPORTS.move_to_end(key)
        return kept[2]
    call = _export_litert(model, threads)
    if stamp is not None:
        _EXPORTS[key] = (weakref.ref(model), stamp, call)
        while len(_EXPORTS) > _EXPORTS_KEPT:
            _EXPORTS.popitem(last=False)
    return call


def _stamp(model: keras.Model) -> str | None:
    """A digest of the model's architecture and weights (None: not serializable)."""
    try:
        digest = hashlib.blake2b(model.to_json().encode(), digest_size=16)
    except Exception:  # a subclassed model without get_config: never reused
        return None
    for variable in model.weights:
        value = np.ascontiguousarray(keras.ops.convert_to_numpy(variable.value))
        digest.update(f"{variable.path}{value.shape}{value.dtype}".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


def _export_litert(model: keras.Model, threads: int | None):
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:  # tensorflow still ships it (deprecated)
        import tensorflow as tf

        Interpreter = tf.lite.Interpreter
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.tflite"
        quiet = logging.getLogger("tensorflow")
        level = quiet.level
        quiet.setLevel(logging.WARNING)  # "Assets written to ..." for every export
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model.export(str(path), format="litert", verbose=False)
        finally:
            quiet.setLevel(level)
        content = path.read_bytes()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tf.lite.Interpreter's deprecation notice
        interpreter = Interpreter(model_content=content, num_threads=threads or os.cpu_count())
    inp = interpreter.get_input_details()[0]["index"]
    given: list = [None]

    def call(x):
        # the input is copied in once per array, not timed with every call: a layer
        # timed alone would otherwise pay a copy that the whole model does not
        if given[0] is not x:
            interpreter.resize_tensor_input(inp, list(x.shape))
            interpreter.allocate_tensors()
            interpreter.set_tensor(inp, x)
            given[0] = x
        interpreter.invoke()

    return call


def _keras_call(model: keras.Model, threads: int | None):
    return model.predict_on_batch


def time_ms(model: keras.Model, batch_size: int, runtime: str = "keras",
            threads: int | None = None, repeats: int = 20,
            min_sample_ms: float | None = None) -> float:  # fmt: skip
    """Median ms of one forward pass of `model` on a random batch of `batch_size`."""
    return compare_ms([model], batch_size, runtime, threads, repeats, min_sample_ms)[0]


def compare_ms(models: list, batch_size: int, runtime: str = "keras",
               threads: int | None = None, repeats: int = 20,
               min_sample_ms: float | None = None) -> list[float]:  # fmt: skip
    """Latency in ms of one forward pass of each of `models` (same input shape),
    timed in turn call by call: the first model's median, and for each other model
    the first's median times the median of its per-round ratios to the first, so
    that the machine's drift (other work, clock changes) cancels in the ratios.
    A call faster than `min_sample_ms` is repeated back to back within each timed
    sample (every model the same number of times) and the sample's mean taken, so
    that a sub-millisecond call is not timed against the clock's and the
    scheduler's own jitter, nor against the model timed just before it (None:
    `latency.MIN_SAMPLE_MS`, 5 ms, the default of `profile`)."""
    if runtime == "litert" and len(models[0].inputs) > 1:
        raise ValueError(
            f"runtime='litert' times models with one input; model '{models[0].name}' has "
            f"{len(models[0].inputs)} (a cross-attention layer is timed alone with its "
            "query and value). Use runtime='keras'."
        )
    min_sample_ms = _min_sample(min_sample_ms)
    calls = [(_litert_call if runtime == "litert" else _keras_call)(m, threads) for m in models]
    rng = np.random.default_rng(0)
    xs = [rng.random((batch_size, *t.shape[1:]), "float32") for t in models[0].inputs]
    x = xs[0] if len(xs) == 1 else xs
    times = _round_times(calls, x, repeats, min_sample_ms / 1000.0)
    first = 1000.0 * float(np.median(times[:, 0]))
    base = np.maximum(times[:, 0], 1e-9)
    return [first] + [first * float(np.median(times[:, k] / base))
                      for k in range(1, len(calls))]  # fmt: skip


def _min_sample(min_sample_ms: float | None) -> float:
    """`min_sample_ms` checked, None read as `MIN_SAMPLE_MS`."""
    return non_negative("min_sample_ms", MIN_SAMPLE_MS if min_sample_ms is None else min_sample_ms)


def _round_times(calls: list, x, repeats: int, min_sample_s: float = 0.0) -> np.ndarray:
    """Seconds of one call of each on `x`, `[round, call]`: two untimed rounds,
    then `repeats` rounds of every call in turn (what `compare_ms` aggregates).
    Each sample is the mean of `n` calls back to back, `n` (the same for every
    call) the fewest that make the fastest call's sample last `min_sample_s`, as
    its quicker untimed call measured (at most 1,000)."""
    warm = np.zeros((2, len(calls)))
    for r in range(2):
        for k, call in enumerate(calls):
            start = time.perf_counter()
            call(x)
            warm[r, k] = time.perf_counter() - start
    fastest = max(float(warm.min()), 1e-7)
    n = min(1000, max(1, math.ceil(min_sample_s / fastest)))
    times = np.zeros((repeats, len(calls)))
    for r in range(repeats):
        for k, call in enumerate(calls):
            start = time.perf_counter()
            for _ in range(n):
                call(x)
            times[r, k] = (time.perf_counter() - start) / n
    return times


@dataclasses.dataclass
class BudgetResult:
    """What `prune_to_budget` did: the budget, the dense latency measured, and per
    round the `target` tried, the compact model's measured `ms` and its
    `predicted` ms; `chosen` indexes the round applied to the model."""

    budget_ms: float
    dense_ms: float
    rounds: list
    chosen: int

    @property
    def ms(self) -> float:
        """The measured latency of the compact model that was kept."""
        return self.rounds[self.chosen]["ms"]


def prune_to_budget(
    model: keras.Model,
    table: LatencyTable,
    budget_ms: float | None = None,
    speedup: float | None = None,
    tolerance: float = 0.1,
    max_rounds: int = 6,
    repeats: int = 20,
    **prune_kwargs,
) -> BudgetResult:
    """Prune to a *measured* latency: predict with `table`, compact, measure, correct.

    Each round prunes the weights as they were given (restored between rounds) with
    `prune(..., metric="latency")`, times the compact model through the table's
    runtime at its batch size, and corrects the target (rescaled by `budget /
    measured`, then by the secant through the two nearest rounds) until the
    measurement is within `tolerance` of the budget, `max_rounds` are done, or a
    round would compact to widths already measured (every layer it may prune at
    its floor). The round nearest the budget without exceeding it by more than
    `tolerance` (else the fastest) is applied, with masks.

    Args:
        model: the model to prune (in place).
        table: its `LatencyTable` (`profile`).
        budget_ms: the latency to reach, ms per batch; or
        speedup: the dense latency measured now over this (e.g. 3.0 for 3x faster).
        tolerance: relative distance to the budget that ends the search (default 0.1).
        max_rounds: prune-compact-measure rounds at most (default 6).
        repeats: timed calls per measurement (median).
        **prune_kwargs: passed to `keras_gss.prune` (`round_to`, `layers`, ...).

    Returns:
        A `BudgetResult`.
    """
    from keras_gss.compact import compact
    from keras_gss.pruning import prune

    if (budget_ms is None) == (speedup is None):
        raise ValueError("prune_to_budget needs exactly one of `budget_ms` and `speedup`.")
    if not 0 < tolerance < 1:
        raise ValueError(f"Invalid value for argument `tolerance`: {tolerance!r}. Expected (0, 1).")
    max_rounds = int_at_least("max_rounds", max_rounds, 1)
    dense = time_ms(model, table.batch_size, table.runtime, table.threads, repeats,
                    table.min_sample_ms)  # fmt: skip
    goal = budget_ms if budget_ms is not None else dense / speedup
    if not (math.isfinite(goal) and 0 < goal < dense):
        raise ValueError(
            f"The budget ({goal!r} ms) must be below the dense latency measured now "
            f"({dense:.4g} ms per batch of {table.batch_size})."
        )
    saved = model.get_weights()
    prune_kwargs = {"ranking": "auto", **prune_kwargs, "metric": "latency", "latency_table": table}
    target, rounds, shapes = 1.0 - goal / dense, [], []
    try:
        for _ in range(max_rounds):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # an unreachable target is measured below
                prune(model, target, freeze=False, **prune_kwargs)
            small, predicted = compact(model), table.predict(model)
            model.set_weights(saved)
            shape = [tuple(w.shape) for w in small.weights]
            if shape in shapes:
                break  # the same widths as a round measured: the floors, or no step left
            shapes.append(shape)
            # timed in turn with the model as given (its export reused): the
            # ratio, in units of the dense latency measured first
            pair = compare_ms([model, small], table.batch_size, table.runtime, table.threads,
                              repeats, table.min_sample_ms)  # fmt: skip
            ms = dense * pair[1] / pair[0]
            rounds.append({"target": target, "ms": ms, "predicted": predicted})
            if abs(ms / goal - 1.0) <= tolerance:
                break
            target = _next_target(rounds, goal)
            if any(abs(r["target"] - target) < 1e-4 for r in rounds):
                break  # the correction no longer changes what is pruned
    finally:
        model.set_weights(saved)
    fits = [k for k, r in enumerate(rounds) if r["ms"] <= goal * (1 + tolerance)]
    chosen = (max(fits, key=lambda k: rounds[k]["ms"]) if fits
              else min(range(len(rounds)), key=lambda k: rounds[k]["ms"]))  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # said once below, with the measurement
        prune(model, rounds[chosen]["target"], **prune_kwargs)
    if rounds[chosen]["ms"] > goal * (1 + tolerance):
        warnings.warn(
            f"prune_to_budget: the budget of {goal:.4g} ms was not reached; the compact "
            f"model kept measures {rounds[chosen]['ms']:.4g} ms (dense {dense:.4g} ms). The "
            "layers it may prune are at their floors (min_live_groups, round_to, layers=), "
            "or more rounds are needed (max_rounds).",
            stacklevel=2,
        )
    return BudgetResult(goal, dense, rounds, chosen)


def _next_target(rounds: list, goal: float) -> float:
    """The next target: the secant through the two rounds nearest the goal when they
    bracket or slope the right way, else the last target rescaled by goal / measured;
    kept inside the bracket the rounds measured (the largest target still too slow,
    the smallest already fast enough), else the bracket's midpoint: two rounds that
    measure alike within noise give a nearly flat secant that would jump far."""
    last = rounds[-1]
    guess = 1.0 - (1.0 - last["target"]) * goal / last["ms"]
    if len(rounds) >= 2:
        a, b = sorted(rounds, key=lambda r: abs(r["ms"] - goal))[:2]
        if (
            abs(b["target"] - a["target"]) > 1e-6
            and (b["ms"] - a["ms"]) * (b["target"] - a["target"]) < 0
        ):
            slope = (b["ms"] - a["ms"]) / (b["target"] - a["target"])
            guess = a["target"] + (goal - a["ms"]) / slope
    slow = [r["target"] for r in rounds if r["ms"] > goal]
    fast = [r["target"] for r in rounds if r["ms"] < goal]
    if slow and fast and max(slow) < min(fast) and not max(slow) < guess < min(fast):
        guess = (max(slow) + min(fast)) / 2
    return min(0.99, max(0.0, guess))


# -- profiling ----------------------------------------------------------------


def _config(layer) -> dict:
    """The layer's config for inference: no name, regularizer or constraint (masks)."""
    config = layer.get_config()
    config.pop("name", None)
    for key in config:
        if key.endswith(("_regularizer", "_constraint")):
            config[key] = None
    return config


def _variant(call: dependency.Call, batch_size: int, cin: int, cout: int) -> keras.Model:
    """The call's layer alone, rebuilt for `cin` input and `cout` output channels
    (heads, for attention), called as in the model (other inputs at their width)."""
    layer, read = call.op, call.ins[0]
    config = _config(layer)
    handler = call.handler
    if isinstance(handler, (dependency.Producer, dependency.Attention)):
        config[handler.size_arg] = cout  # output channels; heads
    inputs: dict = {}  # id(tensor) -> its Input (self-attention: one for both)

    def placeholder(tensor):
        if id(tensor) not in inputs:
            shape = [batch_size, *tensor.shape[1:]]
            if not inputs:  # the first input: the channels read
                shape[read.axis] = cin
            inputs[id(tensor)] = keras.Input(batch_shape=tuple(shape), dtype=tensor.dtype)
        return inputs[id(tensor)]

    args = call.node.arguments
    args, kwargs = keras.tree.map_structure(
        lambda v: placeholder(v) if isinstance(v, keras.KerasTensor) else v,
        (args.args, args.kwargs),
    )
    out = type(layer).from_config(config)(*args, **kwargs)
    placeholders = list(inputs.values())
    return keras.Model(placeholders[0] if len(placeholders) == 1 else placeholders, out)


def _signature(call: dependency.Call, full: tuple) -> str:
    config = _config(call.op)
    return json.dumps([type(call.op).__name__, config, list(call.ins[0].shape[1:]),
                       call.ins[0].axis, list(full)], sort_keys=True, default=str)  # fmt: skip


def profile(
    model: keras.Model,
    batch_size: int = 1,
    runtime: str = "litert",
    threads: int | None = None,
    ladder=LADDER,
    round_to: int = 8,
    repeats: int = 20,
    path: str | os.PathLike | None = None,
    verbose: int = 1,
    min_sample_ms: float | None = None,
    steps: bool = True,
) -> LatencyTable:
    """Time every prunable layer of `model` at a ladder of widths: a `LatencyTable`.

    Args:
        model: a built functional or Sequential model.
        batch_size: the batch the latency is for (default 1).
        runtime: `"litert"` (exported by `model.export(format="litert")`, run by the
            LiteRT interpreter; TensorFlow backend) or `"keras"` (`predict_on_batch`).
        threads: interpreter threads (default None: all cores).
        ladder: fractions of each width to time (default 1/8, 1/4, 1/2, 3/4, 1),
            rounded up to multiples of `round_to` (default 8).
        repeats: timed calls per entry, the median kept (default 20).
        path: a JSON file: loaded instead of profiling when it holds a table of
            this model for the same batch, runtime, threads, `min_sample_ms` and `steps`;
            written otherwise.
        verbose: 1 shows a progress bar.
        min_sample_ms: each timed sample repeats a faster call back to back until
            it lasts this long (`compare_ms`; default None: `MIN_SAMPLE_MS`, 5 ms).
            `prune_to_budget` times its rounds the way the table was timed.
        steps: also time each layer whose output width is laddered at every
            multiple of `round_to` in between (at its full input width, in turn;
            at most `MAX_STEPS` widths), so that the table follows the runtime's
            steps (default True; False: linear between ladder points).

    Layers of the same configuration and input shape are timed once. Input widths
    are laddered only for layers that read pruned channels.
    """
    runtime = _choice("runtime", runtime, RUNTIMES)
    batch_size = int_at_least("batch_size", batch_size, 1)
    round_to = int_at_least("round_to", round_to, 1)
    repeats = int_at_least("repeats", repeats, 1)
    if threads is not None:
        threads = int_at_least("threads", threads, 1)
    sample = _min_sample(min_sample_ms)
    fractions = sorted({float(f) for f in ladder})
    if not fractions or not all(0 < f <= 1 for f in fractions):
        raise ValueError(
            f"Invalid value for argument `ladder`: fractions in (0, 1]. Received: {ladder!r}"
        )
    infos = graph.describe(model)
    if not infos or infos[0].dependency is None:
        raise TypeError(
            f"profile needs a functional or Sequential model with prunable layers; "
            f"model '{model.name}' has none or no layer graph."
        )
    plan = _plan(infos, batch_size, fractions, round_to, steps)
    if path is not None and Path(path).exists():
        cached = LatencyTable.load(path)
        how = (cached.batch_size, cached.runtime, cached.threads, cached.min_sample_ms)
        same = how == (batch_size, runtime, threads, sample)
        if same and set(plan["keys"]) <= set(cached.entries) and cached.layers == plan["layers"]:
            if all(bool(plan["entries"][k]["steps"]) == ("steps" in cached.entries[k])
                   for k in plan["keys"]):  # fmt: skip
                return cached
    todo = [(key, a, b) for key, e in plan["entries"].items() for a in e["in"] for b in e["out"]
            if len(e["in"]) > 1 or a == e["in"][0]]  # fmt: skip
    stepped = {key: e for key, e in plan["entries"].items() if e["steps"]}
    total = len(todo) + sum(len(e["steps"]) for e in stepped.values()) + 2
    bar = keras.utils.Progbar(total, unit_name="timing") if verbose else None
    ms: dict = {}
    for key, a, b in todo:
        entry = plan["entries"][key]
        cin, cout = (b, b) if entry["multiplier"] else (a, b)
        ms[(key, a, b)] = time_ms(_variant(entry["call"], batch_size, cin, cout),
                                  batch_size, runtime, threads, repeats, sample)  # fmt: skip
        if bar:
            bar.add(1)
    entries = {}
    for key, e in plan["entries"].items():
        rows = e["in"] if len(e["in"]) > 1 else e["in"][:1]
        grid = _monotone(np.array([[ms[(key, a, b)] for b in e["out"]] for a in rows]))
        entries[key] = {"in": e["in"] if len(rows) > 1 else [], "out": e["out"], "ms": grid,
                        "multiplier": e["multiplier"]}  # fmt: skip
    for key, e in stepped.items():  # timed in turn: the steps' shape, free of drift
        cin = max(e["in"])
        variants = [_variant(e["call"], batch_size, w if e["multiplier"] else cin, w)
                    for w in e["steps"]]  # fmt: skip
        times = compare_ms(variants, batch_size, runtime, threads, repeats, sample)
        entries[key]["steps"] = {"out": e["steps"], "ms": times}
        if bar:
            bar.add(len(variants))
    table = LatencyTable(batch_size, runtime, threads, 0.0, entries, plan["layers"],
                         plan["full"], {"sum": [1.0, 1.0], "ms": [1.0, 1.0]}, sample)  # fmt: skip
    models, sums = [model], [_sum(table, infos, np.zeros(graph.coupled_size(infos), bool))]
    for fraction in CALIBRATION:
        small, dead = _narrowed(model, infos, round_to, fraction)
        if small is not None:
            models.append(small)
            sums.append(_sum(table, infos, dead))
    if bar:
        bar.add(1)  # the narrowed models built
    # timed in turn, so that drift during the profile does not bend the fit
    times = compare_ms(models, batch_size, runtime, threads, repeats, sample)
    if bar:
        bar.add(1)
    table.dense_ms = times[0]
    table.calibration = {"sum": sums, "ms": times}
    if path is not None:
        table.save(path)
    return table


def _monotone(grid: np.ndarray) -> list:
    """More channels never take less time: a timing above a wider one is noise (a
    spike), lowered to it (rows: input widths, columns: output widths). A running
    minimum from the widest width, not a running maximum from the narrowest, which
    carries a spike to every wider entry (benchmarks/probes/probe_table_envelope.py:
    90th-percentile entry error 0.27 against 0.43 on LeNet, 0.23 against 0.52 on
    ResNet-20)."""
    flipped = grid[::-1, ::-1]
    low = np.minimum.accumulate(np.minimum.accumulate(flipped, axis=0), axis=1)
    return low[::-1, ::-1].tolist()


def _sum(table: LatencyTable, infos, dead) -> float:
    return sum(table.layer_ms(i.layer.name, *w) for i, w in zip(infos, table.widths(infos, dead)))


def _narrowed(model: keras.Model, infos, round_to: int, fraction: float):
    """A compact copy of `model` with every prunable family cut to about `fraction`
    of its width, and the coupled groups that go (None and no groups if none can)."""
    from keras_gss import pruning
    from keras_gss.compact import compact

    units = graph.Units(infos)
    doomed = np.zeros(len(units), dtype=bool)
    for f in range(units.families):
        free = np.flatnonzero((units.family == f) & units.prunable)
        size = int((units.family == f).sum())
        cut = int(size * (1 - fraction))
        count = min(free.size, max(round_to * (cut // round_to), cut))
        if count >= size:  # every layer keeps a group
            count = size - 1
        doomed[free[:count]] = True
    dead = np.zeros(graph.coupled_size(infos), dtype=bool)
    dead[units.root[doomed]] = True
    if not doomed.any():
        return None, dead
    saved = model.get_weights()
    try:
        pruning.apply(model, infos, units.scatter(doomed, infos, fill=False), freeze=False)
        small = compact(model)
    finally:
        model.set_weights(saved)
    return small, dead


def _steps(ladder: list[int], step: int) -> list[int]:
    """Every multiple of `step` between the ladder's ends, with the ladder's widths
    (every `k`-th multiple when more than `MAX_STEPS`); [] when none lies between."""
    lo, hi = ladder[0], ladder[-1]
    first = step * math.ceil(lo / step)
    k = max(1, math.ceil(((hi - first) // step + 1) / MAX_STEPS))
    widths = sorted(set(range(first, hi + 1, step * k)) | set(ladder))
    return widths if len(widths) > len(ladder) else []


def _plan(infos, batch_size, fractions, round_to, steps=True) -> dict:
    entries: dict = {}
    layers: dict = {}
    full: dict = {}
    dep = infos[0].dependency
    units = graph.Units(infos)
    free = set(units.root[units.prunable].tolist())  # coupled groups that can go
    for info in infos:
        keys = []
        out_free = bool(free.intersection(info.coupled.tolist()))
        in_free = info.inputs is not None and bool(free.intersection(info.inputs.tolist()))
        for call in dep.calls_of(info.layer):
            cin, cout = len(call.ins[0].ids), len(call.handler.grouped(dep, call).ids)
            depthwise = isinstance(call.handler, dependency.Depthwise)
            key = _signature(call, (cin, cout))
            if key not in entries:
                width = cin if depthwise else cout  # a depthwise layer: its input width
                step = round_to if call.handler.rounds else 1  # heads: one at a time
                outs = _ladder(width, fractions, step) if out_free else [width]
                ins = _ladder(cin, fractions, round_to) if in_free and not depthwise else [cin]
                m = int(call.op.depth_multiplier) if depthwise else 0
                fine = _steps(outs, step) if steps and len(outs) > 1 else []
                entries[key] = {"call": call, "in": ins, "out": outs, "multiplier": m,
                                "steps": fine}  # fmt: skip
            keys.append(key)
        if not keys:
            raise ValueError(f"Layer '{info.layer.name}' is not called in the model's graph.")
        call = dep.calls_of(info.layer)[0]
        layers[info.layer.name] = keys
        full[info.layer.name] = [len(call.ins[0].ids), info.groups]
    return {"entries": entries, "layers": layers, "full": full, "keys": list(entries)}


def _choice(name: str, value, choices) -> str:
    if value not in choices:
        raise ValueError(
            f"Invalid value for argument `{name}`. Expected one of {choices}. "
            f"Received: {name}={value!r}"
        )
    return value
