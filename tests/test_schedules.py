"""Every LR schedule against its formula, re-written here in plain Python (never via marin_optim).

The formulas come from the anchors (Levanter, Megatron, OLMo-core, optax), with the conventions of
``marin_optim.schedules``: 0-based steps, half-open phases, a decay reaches its end value at its
last step + 1, fractions round down, token counts round up to whole steps.
"""

from __future__ import annotations

import dataclasses
import io
import math
from dataclasses import dataclass

import draccus
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from marin_optim.errors import ConfigError
from marin_optim.schedules import (
    ConstantSchedule,
    CosineSchedule,
    ScheduleConfig,
    ScheduleContext,
    SequentialSchedule,
    WSDSchedule,
    build_lr_schedule,
    encode_schedule,
    key_steps,
    parse_schedule,
    weight_decay_schedule,
)

PEAK = 3e-3
N = 100
EXTRA = 5  # steps evaluated past the end of the run


def near(x: float):
    """Equal up to float32 rounding."""
    return pytest.approx(x, rel=2e-5, abs=1e-9)


def evaluate(schedule, n: int = N) -> np.ndarray:
    """The schedule at steps 0 .. n + EXTRA - 1, in one vectorised call."""
    return np.asarray(schedule(jnp.arange(n + EXTRA)), dtype=np.float64)


def check(actual: np.ndarray, expected_fn, n: int = N) -> None:
    expected = np.array([expected_fn(s) for s in range(n + EXTRA)], dtype=np.float64)
    np.testing.assert_allclose(actual, expected, rtol=2e-5, atol=1e-9)


def ctx(**kw) -> ScheduleContext:
    base = dict(peak_lr=PEAK, num_train_steps=N, min_lr_ratio=0.1, warmup=10)
    base.update(kw)
    return ScheduleContext(**base)


# -- reference formulas (from the anchors, written independently) --------------------------------


def warm(s: int, w: int, init: float, top: float) -> float:
    """Linear warmup: init at 0, top at w."""
    return init + (top - init) * min(s, w) / w


def one_cycle(s: int, w: int, stable: int, decay_fn, init: float = 0.0, peak: float = PEAK) -> float:
    """Warmup [0, w), stable [w, w + stable), decay from w + stable (decay_fn gets t >= 0)."""
    if s < w:
        return warm(s, w, init, peak)
    if s < w + stable:
        return peak
    return decay_fn(s - w - stable)


def cosine_ref(peak, lo, T, exponent=1.0):
    # optax cosine_decay_schedule with alpha = lo / peak: peak * ((1 - a) * c**exponent + a)
    a = lo / peak
    return lambda t: peak * ((1 - a) * (0.5 * (1 + math.cos(math.pi * min(t, T) / T))) ** exponent + a)


def linear_ref(peak, lo, T):
    return lambda t: peak + (lo - peak) * min(t, T) / T


def polynomial_ref(peak, lo, T, power):
    return lambda t: (peak - lo) * (1 - min(t, T) / T) ** power + lo


def inv_sqrt_ref(peak, lo, w, tau):
    return lambda t: max(peak * min(1.0, 1.0 / math.sqrt(max(t + w, 1) / tau)), lo)


def inv_ref(peak, lo, T):
    return lambda t: max(peak * min(1.0, 1.0 / ((peak / lo - 1) * max(t, 1) / T + 1)), lo)


def power_ref(peak, bs, seq, a, b):
    return lambda t: peak if t == 0 else min(peak, bs * a * (t * bs * seq) ** b)


MEGATRON = {
    "linear": lambda r: 1 - r,
    "cosine": lambda r: 0.5 * (math.cos(math.pi * r) + 1),
    "exponential": lambda r: 2 * 0.5**r - 1,
    "minus_sqrt": lambda r: 1 - math.sqrt(r),
}


def megatron_ref(style, peak, lo, T):
    return lambda t: lo + MEGATRON[style](min(t, T) / T) * (peak - lo)


LO = 0.1 * PEAK
W = 10
T_FULL = N - W  # decay over the rest of the run

# name, schedule (str or mapping), reference lr(step) for warmup=10, N=100, min_lr_ratio=0.1
CYCLE_SHAPES = [
    ("constant", "constant", lambda s: warm(s, W, 0, PEAK) if s < W else PEAK),
    ("linear", "linear", lambda s: one_cycle(s, W, 0, linear_ref(PEAK, LO, T_FULL))),
    ("cosine", "cosine", lambda s: one_cycle(s, W, 0, cosine_ref(PEAK, LO, T_FULL))),
    (
        "cosine-exponent",
        {"type": "cosine", "exponent": 2.0},
        lambda s: one_cycle(s, W, 0, cosine_ref(PEAK, LO, T_FULL, 2.0)),
    ),
    ("polynomial", "polynomial", lambda s: one_cycle(s, W, 0, polynomial_ref(PEAK, LO, T_FULL, 2.0))),
    (
        "polynomial-3",
        {"type": "polynomial", "power": 3},
        lambda s: one_cycle(s, W, 0, polynomial_ref(PEAK, LO, T_FULL, 3.0)),
    ),
    (
        "inv_sqrt",
        {"type": "inv_sqrt", "tau": 20},
        lambda s: one_cycle(s, W, 0, inv_sqrt_ref(PEAK, LO, W, 20.0)),
    ),
    ("inv", "inv", lambda s: one_cycle(s, W, 0, inv_ref(PEAK, LO, T_FULL))),
    (
        "power",
        # sizes where the power law is below the peak from the first decay step on
        {"type": "power", "batch_size": 4, "seq_length": 100_000, "a": 0.5, "b": -0.51},
        lambda s: one_cycle(s, W, 0, power_ref(PEAK, 4, 100_000, 0.5, -0.51)),
    ),
] + [
    # wsd: decay = 20% of the cycle (20 steps), stable 70 steps
    (
        f"wsd-{style}",
        {"type": "wsd", "decay_style": style},
        lambda s, st=style: one_cycle(s, W, 70, megatron_ref(st, PEAK, LO, 20)),
    )
    for style in MEGATRON
]


@pytest.mark.parametrize("name,spec,ref", CYCLE_SHAPES, ids=[c[0] for c in CYCLE_SHAPES])
def test_cycle_shapes_match_their_formulas(name, spec, ref):
    values = evaluate(build_lr_schedule(spec, ctx()))
    check(values, ref)
    # The named points, spelled out: start, end of warmup, last step, past the end.
    assert values[0] == 0.0
    assert values[W] == near(ref(W))
    mid = 90 if name.startswith("wsd") else W + T_FULL // 2
    assert values[mid] == near(ref(mid))
    assert values[N - 1] == near(ref(N - 1))
    assert values[N + 3] == near(ref(N + 3))
    if name != "constant":
        assert values[mid] < PEAK * 0.99  # the decay is under way


def test_named_values_mid_decay():
    """Mid-decay values that need no formula to know."""
    mid = W + T_FULL // 2  # step 55: r = 0.5
    assert evaluate(build_lr_schedule("cosine", ctx()))[mid] == near((PEAK + LO) / 2)
    assert evaluate(build_lr_schedule("linear", ctx()))[mid] == near((PEAK + LO) / 2)
    wsd_mid = 80 + 10  # decay over steps [80, 100): r = 0.5 at step 90
    for style, coeff in [("exponential", math.sqrt(2) - 1), ("minus_sqrt", 1 - math.sqrt(0.5))]:
        v = evaluate(build_lr_schedule({"type": "wsd", "decay_style": style}, ctx()))
        assert v[wsd_mid] == near(LO + coeff * (PEAK - LO))
        assert v[79] == near(PEAK) and v[N] == near(LO)
    # Every decaying shape sits at the floor one step past the run.
    for spec in ["linear", "cosine", "polynomial", "inv", "wsd"]:
        assert evaluate(build_lr_schedule(spec, ctx()))[N] == near(LO)


def test_warmup_init_lr():
    init = 5e-4
    values = evaluate(build_lr_schedule("cosine", ctx(warmup_init_lr=init)))
    check(values, lambda s: one_cycle(s, W, 0, cosine_ref(PEAK, LO, T_FULL), init=init))
    assert values[0] == near(init) and values[5] == near((init + PEAK) / 2)


@pytest.mark.parametrize(
    "name", ["half_cosine", "cosine_linear_decay", "power_lr", "wsds", "sequential", "wsd"]
)
def test_warmup_init_lr_in_every_warming_schedule(name):
    v = evaluate(build_lr_schedule(name, ctx(warmup_init_lr=1e-4)))
    top = (PEAK + LO) / 2 if name == "half_cosine" else PEAK  # half_cosine warms up to the cosine's middle
    assert v[0] == near(1e-4) and v[W // 2] == near((1e-4 + top) / 2) and v[W] == near(top)


def test_warmup_of_one_step_is_one_step():
    values = evaluate(build_lr_schedule("linear", ctx(warmup=1, warmup_init_lr=1e-4)))
    assert values[0] == near(1e-4)
    assert values[1] == near(PEAK)
    check(values, lambda s: one_cycle(s, 1, 0, linear_ref(PEAK, LO, N - 1), init=1e-4))


def test_warmup_fraction_and_zero():
    # 0.1 of 100 steps = 10 steps; 0.29 of 100 = 29 (not 28 from float error)
    check(evaluate(build_lr_schedule("cosine", ctx(warmup=0.1))), CYCLE_SHAPES[2][2])
    v = evaluate(build_lr_schedule("linear", ctx(warmup=0.29)))
    check(v, lambda s: one_cycle(s, 29, 0, linear_ref(PEAK, LO, 71)))
    v = evaluate(build_lr_schedule("linear", ctx(warmup=0)))
    assert v[0] == near(PEAK)
    check(v, lambda s: linear_ref(PEAK, LO, N)(s))


def test_min_lr_absolute_wins_over_ratio():
    v = evaluate(build_lr_schedule("linear", ctx(min_lr=2e-4, min_lr_ratio=0.5)))
    check(v, lambda s: one_cycle(s, W, 0, linear_ref(PEAK, 2e-4, T_FULL)))
    v = evaluate(build_lr_schedule("linear", ctx(min_lr_ratio=0.5)))
    assert v[N] == near(0.5 * PEAK)
    v = evaluate(build_lr_schedule("cosine", ctx(min_lr=0.0)))
    assert v[N] == 0.0


def test_explicit_decay_gives_a_stable_phase():
    # decay=30 steps: stable on [10, 70), cosine over [70, 100)
    v = evaluate(build_lr_schedule("cosine", ctx(decay=30)))
    check(v, lambda s: one_cycle(s, W, 60, cosine_ref(PEAK, LO, 30)))
    # decay=0.3 of the cycle is the same
    np.testing.assert_array_equal(v, evaluate(build_lr_schedule("cosine", ctx(decay=0.3))))
    # wsd's own decay_fraction only applies when decay is None
    v = evaluate(build_lr_schedule({"type": "wsd", "decay_fraction": 0.5}, ctx()))
    check(v, lambda s: one_cycle(s, W, 40, megatron_ref("linear", PEAK, LO, 50)))
    v = evaluate(build_lr_schedule({"type": "wsd", "decay_fraction": 0.5}, ctx(decay=10)))
    check(v, lambda s: one_cycle(s, W, 80, megatron_ref("linear", PEAK, LO, 10)))


def _max_jump(values: np.ndarray, n: int = N) -> float:
    return float(np.max(np.abs(np.diff(values[: n + 1]))))


def test_clamping_never_jumps():
    # warmup longer than the run: the ramp is shortened to the run and reaches the peak at step N
    v = evaluate(build_lr_schedule("cosine", ctx(warmup=500)))
    check(v, lambda s: warm(s, N, 0.0, PEAK))
    assert _max_jump(v) == near(PEAK / N)
    # warmup = the whole run as a fraction behaves the same
    np.testing.assert_allclose(evaluate(build_lr_schedule("cosine", ctx(warmup=1.0))), v, rtol=1e-6)
    # a decay longer than what the warmup leaves starts right at the end of the warmup
    v = evaluate(build_lr_schedule("linear", ctx(decay=500)))
    check(v, lambda s: one_cycle(s, W, 0, linear_ref(PEAK, LO, T_FULL)))
    v = evaluate(build_lr_schedule({"type": "wsd", "decay_style": "cosine"}, ctx(decay=1.0)))
    check(v, lambda s: one_cycle(s, W, 0, megatron_ref("cosine", PEAK, LO, T_FULL)))
    assert _max_jump(v) <= PEAK / W + 1e-9
    # a rewarmup longer than its cycle is shortened to the cycle
    v = evaluate(build_lr_schedule("linear", ctx(cycles=2, rewarmup=80)))
    assert v[50] == near(LO) and v[99] == near(LO + (PEAK - LO) * 49 / 50)
    assert _max_jump(v[50:], N - 50) <= (PEAK - LO) / 50 * 1.0001


def test_cycles_and_rewarmup():
    # cycles=2 over 100 steps: [0, 50) and [50, 100); warmup 10, rewarmup 5 (from the floor)
    v = evaluate(build_lr_schedule("linear", ctx(cycles=2, rewarmup=5)))

    def ref(s):
        if s < 50:
            return one_cycle(s, 10, 0, linear_ref(PEAK, LO, 40))
        return one_cycle(s - 50, 5, 0, linear_ref(PEAK, LO, 45), init=LO)

    check(v, ref)
    assert v[49] > LO and v[50] == near(LO) and v[55] == near(PEAK)
    # the same cycles as an explicit end point, and as a cycle length
    np.testing.assert_array_equal(v, evaluate(build_lr_schedule("linear", ctx(cycles=[50], rewarmup=5))))
    np.testing.assert_array_equal(v, evaluate(build_lr_schedule("linear", ctx(cycle_length=50, rewarmup=5))))
    np.testing.assert_array_equal(
        v, evaluate(build_lr_schedule("linear", ctx(cycle_length=[50], rewarmup=5)))
    )
    np.testing.assert_array_equal(
        v, evaluate(build_lr_schedule("linear", ctx(cycle_length=0.5, rewarmup=0.1)))
    )


def test_cycle_length_remainder_joins_the_last_cycle():
    # Levanter: cycle_length=30 over 100 steps -> [0, 30), [30, 60), [60, 100); no rewarmup: LR jumps to peak
    v = evaluate(build_lr_schedule("cosine", ctx(cycle_length=30, warmup=0)))

    def ref(s):
        if s < 30:
            return cosine_ref(PEAK, LO, 30)(s)
        if s < 60:
            return cosine_ref(PEAK, LO, 30)(s - 30)
        return cosine_ref(PEAK, LO, 40)(s - 60)

    check(v, ref)
    # cycle_length list [40, 40] -> [0, 40), [40, 80), [80, 100)
    v = evaluate(build_lr_schedule("linear", ctx(cycle_length=[40, 40], warmup=0)))
    check(
        v, lambda s: linear_ref(PEAK, LO, 40 if s < 80 else 20)(s - (0 if s < 40 else 40 if s < 80 else 80))
    )
    # int cycles use Levanter's equal split: int(100 / 3 * k) -> 33, 66
    v = evaluate(build_lr_schedule("linear", ctx(cycles=3, warmup=0)))
    check(
        v, lambda s: linear_ref(PEAK, LO, 33 if s < 66 else 34)(s - (0 if s < 33 else 33 if s < 66 else 66))
    )


def test_rewarmup_starts_from_the_previous_cycles_final_lr():
    # inv_sqrt does not end at the floor: the rewarmup must start where cycle 1 ended.
    tau = 5.0
    v = evaluate(build_lr_schedule({"type": "inv_sqrt", "tau": tau}, ctx(cycles=2, warmup=4, rewarmup=4)))
    end_of_first = inv_sqrt_ref(PEAK, LO, 4, tau)(46)

    def ref(s):
        if s < 50:
            return one_cycle(s, 4, 0, inv_sqrt_ref(PEAK, LO, 4, tau))
        return one_cycle(s - 50, 4, 0, inv_sqrt_ref(PEAK, LO, 4, tau), init=end_of_first)

    check(v, ref)
    assert v[50] == near(end_of_first)


def test_tokens_units():
    tps = 1000
    # warmup 10_000 tokens = 10 steps; decay 20_500 tokens -> ceil = 21 steps
    v = evaluate(
        build_lr_schedule("cosine", ctx(units="tokens", tokens_per_step=tps, warmup=10_000, decay=20_500))
    )
    check(v, lambda s: one_cycle(s, 10, 69, cosine_ref(PEAK, LO, 21)))
    # cycle end points in tokens
    a = evaluate(
        build_lr_schedule("linear", ctx(units="tokens", tokens_per_step=tps, warmup=10_000, cycles=[50_000]))
    )
    b = evaluate(build_lr_schedule("linear", ctx(warmup=10, cycles=[50])))
    np.testing.assert_array_equal(a, b)
    # fractions stay fractions
    a = evaluate(build_lr_schedule("linear", ctx(units="tokens", tokens_per_step=tps, warmup=0.1)))
    np.testing.assert_array_equal(a, evaluate(build_lr_schedule("linear", ctx(warmup=10))))
    with pytest.raises(ConfigError, match="tokens_per_step"):
        ctx(units="tokens", warmup=10_000)


# -- whole-run schedules (OLMo-core) --------------------------------------------------------------


def test_half_cosine():
    v = evaluate(build_lr_schedule("half_cosine", ctx()))
    mid = LO + (PEAK - LO) / 2

    def ref(s):
        if s < W:
            return warm(s, W, 0.0, mid)
        if s >= N:
            return LO
        c, span = s - W, N - W
        return LO + (PEAK - LO) * (1 + math.cos(math.pi * (c + span) / (2 * span))) / 2

    check(v, ref)
    assert v[W] == near(mid) and v[N] == near(LO)


def test_cosine_linear_decay():
    # decay_fraction 0.1 -> the last 10 steps go linearly to decay_min_lr
    spec = {"type": "cosine_linear_decay", "decay_min_lr": 1e-5}
    v = evaluate(build_lr_schedule(spec, ctx()))

    def cos(c):
        return LO + (PEAK - LO) * (1 + math.cos(math.pi * (c - W) / (N - W))) / 2

    def ref(s):
        if s < W:
            return warm(s, W, 0.0, PEAK)
        if s < N - 10:
            return cos(s)
        return 1e-5 + (cos(N - 10) - 1e-5) * max(N - s, 0) / 10

    check(v, ref)
    assert v[N] == near(1e-5)
    # decay from the optimizer overrides the fraction; the tail ends at the min LR by default
    v = evaluate(build_lr_schedule("cosine_linear_decay", ctx(decay=20)))
    assert v[N] == near(LO) and v[80] == near(cos(80))
    assert v[90] == near(LO + (cos(80) - LO) * 0.5)


def test_exponential_rise():
    lr_min = 1e-7
    v = evaluate(build_lr_schedule({"type": "exponential", "lr_min": lr_min}, ctx()))
    check(v, lambda s: lr_min * (PEAK / lr_min) ** (min(s, N) / N))
    assert v[0] == near(lr_min) and v[N] == near(PEAK)


def test_power_lr():
    b = -0.51
    v = evaluate(build_lr_schedule({"type": "power_lr", "decay_min_lr": 0.0}, ctx()))

    def ref(s):
        if s <= W:
            return warm(s, W, 0.0, PEAK)
        if s >= N - 10:
            start = PEAK * ((N - 10) / W) ** b
            return start * max(N - s, 0) / 10
        return PEAK * (s / W) ** b

    check(v, ref)
    assert v[40] == near(PEAK * 4**b)
    # no tail: the power law continues past the end
    v = evaluate(build_lr_schedule({"type": "power_lr", "decay_fraction": 0.0}, ctx()))
    check(v, lambda s: warm(s, W, 0.0, PEAK) if s <= W else PEAK * (s / W) ** b)


def test_wsds_periods_with_multipliers():
    spec = {"type": "wsds", "period_lengths": [40, 30, 30], "period_lr_multipliers": [1.0, 0.5, 0.25]}
    v = evaluate(build_lr_schedule(spec, ctx()))

    def period(s, start, length, top, warmup=0):
        d = math.floor(0.1 * length)  # decay_fraction 0.1 of each period
        return one_cycle(s - start, warmup, length - warmup - d, linear_ref(top, LO, d), peak=top)

    def ref(s):
        if s < 40:
            return period(s, 0, 40, PEAK, warmup=W)
        if s < 70:
            return period(s, 40, 30, 0.5 * PEAK)
        if s < 100:
            return period(s, 70, 30, 0.25 * PEAK)
        return LO

    check(v, ref)
    assert v[36] == near(PEAK) and v[39] == near(PEAK - (PEAK - LO) * 3 / 4)
    assert v[40] == near(0.5 * PEAK)  # the next period starts flat, without rewarmup
    # periods from the optimizer's cycles, and an explicit decay length per period
    v = evaluate(build_lr_schedule("wsds", ctx(cycles=2, decay=5, min_lr=0.0)))
    check(
        v,
        lambda s: (
            one_cycle(s, W, 35, linear_ref(PEAK, 0, 5))
            if s < 50
            else one_cycle(s - 50, 0, 45, linear_ref(PEAK, 0, 5))
        ),
    )


def test_sequential_stages_and_override_decay():
    spec = {
        "type": "sequential",
        "schedules": ["constant", "cosine", {"type": "linear"}],
        "lengths": [40, 30],
    }
    c = ctx(min_lr_ratio=0.5)
    v = evaluate(build_lr_schedule(spec, c))
    # each stage's min LR is 0.5 x its own peak (OLMo-core alpha_f)

    def main(s):
        if s < 40:
            return warm(s, W, 0.0, PEAK) if s < W else PEAK
        if s < 70:
            return cosine_ref(PEAK, 0.5 * PEAK, 30)(s - 40)
        return linear_ref(0.5 * PEAK, 0.25 * PEAK, 30)(s - 70)

    check(v, main)
    # a late linear override from step 80 over 10 steps to 1e-5
    spec_o = {**spec, "override_decay": {"start": 80, "duration": 10, "end_lr": 1e-5}}
    v = evaluate(build_lr_schedule(spec_o, c))
    begin = main(80)
    check(v, lambda s: main(s) if s < 80 else begin + (1e-5 - begin) * min(s - 80, 10) / 10)
    # a cosine override given as fractions: from step 90 for 0.2 of the run, clamped to the 10
    # steps left, to the min LR (0.5 x PEAK); it starts from wherever the main schedule is
    spec_c = {**spec, "override_decay": {"start": 0.9, "duration": 0.2, "shape": "cosine"}}
    v = evaluate(build_lr_schedule(spec_c, c))
    begin, end = main(90), 0.5 * PEAK
    check(
        v,
        lambda s: (
            main(s) if s < 90 else end + (begin - end) * (1 + math.cos(math.pi * min(s - 90, 10) / 10)) / 2
        ),
    )
    assert v[N] == near(end)


def test_sequential_default_is_constant_then_linear():
    v = evaluate(build_lr_schedule("sequential", ctx()))
    check(v, lambda s: one_cycle(s, W, 80 - W, linear_ref(PEAK, LO, 20)))


# -- weight decay --------------------------------------------------------------------------------


def test_weight_decay_schedules():
    assert weight_decay_schedule(0.1, None, "constant", N) == 0.1
    assert weight_decay_schedule(0.1, 0.1, "constant", N) == 0.1
    lin = evaluate(weight_decay_schedule(0.1, 0.0, "linear", N))
    check(lin, lambda s: 0.1 - 0.1 * min(s, N) / N)
    cos = evaluate(weight_decay_schedule(0.0, 0.2, "cosine", N))
    # Megatron: start + (end - start) * 0.5 * (cos(pi * (1 - r)) + 1)
    check(cos, lambda s: 0.2 * 0.5 * (math.cos(math.pi * (1 - min(s, N) / N)) + 1))
    assert cos[0] == 0.0 and cos[50] == near(0.1) and cos[N] == near(0.2)


# -- bad inputs ----------------------------------------------------------------------------------

BAD = [
    ("warmup", lambda: ctx(warmup=1.5)),
    ("warmup", lambda: ctx(warmup=True)),
    ("decay", lambda: ctx(decay=-1)),
    ("rewarmup", lambda: ctx(rewarmup="x")),
    ("num_train_steps", lambda: ctx(num_train_steps=0)),
    ("min_lr_ratio", lambda: ctx(min_lr_ratio=1.5)),
    ("min_lr", lambda: ctx(min_lr=1.0)),
    ("warmup_init_lr", lambda: ctx(warmup_init_lr=-1e-3)),
    ("learning_rate", lambda: ctx(peak_lr=float("nan"))),
    ("schedule_units", lambda: ctx(units="epochs")),
    ("cycles", lambda: ctx(cycles=0)),
    ("cycles", lambda: ctx(cycles=101)),
    ("cycles", lambda: ctx(cycles=[50, 40])),
    ("cycles", lambda: ctx(cycles=[50, 150])),
    ("cycles", lambda: ctx(cycles=2, cycle_length=10)),
    ("cycle_length", lambda: ctx(cycle_length=0.0)),
    ("cycle_length", lambda: ctx(cycle_length=1.5)),
    ("cycle_length", lambda: ctx(cycle_length=200)),
    ("cycle_length", lambda: ctx(cycle_length=[60, 60])),
    ("lr_schedule", lambda: parse_schedule("cosinee")),
    ("lr_schedule", lambda: parse_schedule(3)),
    ("decay_stile", lambda: parse_schedule({"type": "wsd", "decay_stile": "linear"})),
    ("decay_style", lambda: parse_schedule({"type": "wsd", "decay_style": "exp"})),
    ("decay_fraction", lambda: parse_schedule({"type": "wsd", "decay_fraction": 1.2})),
    ("exponent", lambda: CosineSchedule(exponent=0.0)),
    ("tau", lambda: parse_schedule({"type": "inv_sqrt", "tau": -1})),
    ("power", lambda: parse_schedule({"type": "polynomial", "power": 0})),
    ("b", lambda: parse_schedule({"type": "power", "b": 0.5})),
    ("batch_size", lambda: build_lr_schedule("power", ctx())),
    ("min_lr", lambda: build_lr_schedule("inv", ctx(min_lr_ratio=0.0))),
    ("warmup", lambda: build_lr_schedule("power_lr", ctx(warmup=0))),
    ("lr_min", lambda: build_lr_schedule({"type": "exponential", "lr_min": 1.0}, ctx())),
    ("cycles", lambda: build_lr_schedule("half_cosine", ctx(cycles=2))),
    ("period_lengths", lambda: build_lr_schedule({"type": "wsds", "period_lengths": [60, 60]}, ctx())),
    ("period_lengths", lambda: parse_schedule({"type": "wsds", "period_lengths": [10, 2.5]})),
    (
        "period_lr_multipliers",
        lambda: parse_schedule({"type": "wsds", "period_lengths": [50], "period_lr_multipliers": [1, 2]}),
    ),
    (
        "period_lr_multipliers",
        lambda: build_lr_schedule({"type": "wsds", "period_lr_multipliers": [1, 2]}, ctx()),
    ),
    ("rewarmup", lambda: build_lr_schedule("wsds", ctx(cycles=2, rewarmup=5))),
    (
        "lengths",
        lambda: parse_schedule({"type": "sequential", "schedules": ["constant", "linear"], "lengths": []}),
    ),
    ("lengths", lambda: build_lr_schedule({"type": "sequential", "lengths": [100]}, ctx())),
    ("schedules[1]", lambda: parse_schedule({"type": "sequential", "schedules": ["constant", "cosinee"]})),
    (
        "override_decay.start",
        lambda: build_lr_schedule({"type": "sequential", "override_decay": {"start": 100}}, ctx()),
    ),
    (
        "override_decay.shape",
        lambda: parse_schedule({"type": "sequential", "override_decay": {"shape": "step"}}),
    ),
    ("override_decay.durration", lambda: SequentialSchedule(override_decay={"durration": 5})),
    ("decay", lambda: build_lr_schedule("sequential", ctx(decay=10))),
    ("weight_decay_schedule", lambda: weight_decay_schedule(0.1, 0.0, "step", N)),
    ("weight_decay_end", lambda: weight_decay_schedule(0.1, 0.0, "constant", N)),
    ("weight_decay_end", lambda: weight_decay_schedule(0.1, None, "linear", N)),
]


@pytest.mark.parametrize("field,make", BAD, ids=[f"{i}-{b[0]}" for i, b in enumerate(BAD)])
def test_bad_input_raises_config_error_naming_the_field(field, make):
    with pytest.raises(ConfigError) as info:
        make()
    assert field in str(info.value)


def test_did_you_mean():
    with pytest.raises(ConfigError, match="did you mean 'cosine'"):
        parse_schedule("cosin")
    with pytest.raises(ConfigError, match="did you mean 'decay_style'"):
        parse_schedule({"type": "wsd", "decay_stile": "linear"})


# -- parsing, draccus, CLI -----------------------------------------------------------------------


def test_parse_schedule_forms():
    assert parse_schedule("cosine") == CosineSchedule()
    assert parse_schedule({"type": "wsd", "decay_style": "exponential"}) == WSDSchedule(
        decay_style="exponential"
    )
    assert parse_schedule({"exponent": 2.0}) == CosineSchedule(exponent=2.0)  # default type
    assert parse_schedule("{type: wsd, decay_style: cosine}") == WSDSchedule(decay_style="cosine")
    assert parse_schedule("{'type': 'cosine', 'exponent': 3.0}") == CosineSchedule(exponent=3.0)
    s = WSDSchedule()
    assert parse_schedule(s) is s
    seq = parse_schedule(
        {"type": "sequential", "schedules": ["constant", {"type": "cosine"}], "lengths": [0.5]}
    )
    assert seq.schedules == [ConstantSchedule(), CosineSchedule()]
    assert encode_schedule("wsd") == {"type": "wsd", "decay_style": "linear", "decay_fraction": 0.2}


@dataclass(frozen=True)
class Holder:
    """How a config holds a schedule: ``ScheduleConfig | str``, normalised in __post_init__."""

    lr_schedule: ScheduleConfig | str = "cosine"
    steps: int = 10

    def __post_init__(self) -> None:
        object.__setattr__(self, "lr_schedule", parse_schedule(self.lr_schedule))


@dataclass(frozen=True)
class Outer:
    opt: Holder = dataclasses.field(default_factory=Holder)


def _example(name: str) -> ScheduleConfig:
    examples = {
        "power": {"type": "power", "batch_size": 8, "seq_length": 32},
        "wsds": {"type": "wsds", "period_lengths": [0.5, 0.5], "period_lr_multipliers": [1.0, 0.5]},
        "sequential": {
            "type": "sequential",
            "schedules": ["constant", {"type": "wsd", "decay_style": "cosine"}],
            "lengths": [10],
            "override_decay": {"start": 0.9, "duration": 5, "shape": "cosine"},
        },
    }
    return parse_schedule(examples.get(name, name))


@pytest.mark.parametrize("name", sorted(ScheduleConfig.registered()))
def test_draccus_round_trip(name):
    h = Holder(_example(name))
    encoded = draccus.encode(h)
    assert encoded["lr_schedule"]["type"] == name
    assert draccus.decode(Holder, encoded) == h
    assert draccus.load(Holder, io.StringIO(draccus.dump(h))) == h
    if name != "power":  # power has a required field
        assert draccus.decode(Holder, {"lr_schedule": name}) == Holder(parse_schedule(name))


def test_yaml_and_cli(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("opt:\n  lr_schedule: wsd\n")
    assert draccus.parse(Outer, config_path=str(path), args=[]).opt.lr_schedule == WSDSchedule()
    path.write_text("opt:\n  lr_schedule:\n    type: wsd\n    decay_style: minus_sqrt\n")
    got = draccus.parse(Outer, config_path=str(path), args=["--opt.lr_schedule.decay_fraction", "0.3"])
    assert got.opt.lr_schedule == WSDSchedule(decay_style="minus_sqrt", decay_fraction=0.3)
    # both CLI spellings
    assert draccus.parse(Outer, args=["--opt.lr_schedule", "inv"]).opt.lr_schedule == parse_schedule("inv")
    got = draccus.parse(
        Outer, args=["--opt.lr_schedule.type", "wsd", "--opt.lr_schedule.decay_style", "exponential"]
    )
    assert got.opt.lr_schedule == WSDSchedule(decay_style="exponential")
    got = draccus.parse(Outer, args=["--opt.lr_schedule", "{type: polynomial, power: 3}"])
    assert got.opt.lr_schedule == parse_schedule({"type": "polynomial", "power": 3.0})
    got = draccus.parse(
        Outer,
        args=["--opt.lr_schedule.type", "sequential", "--opt.lr_schedule.override_decay.start", "0.7"],
    )
    assert got.opt.lr_schedule.override_decay.start == 0.7
    # a bad name through draccus surfaces our ConfigError as the cause
    with pytest.raises(Exception) as info:
        draccus.parse(Outer, args=["--opt.lr_schedule", "wsdd"], exit_on_error=False)
    causes, e = [], info.value
    while e is not None:
        causes.append(e)
        e = e.__cause__ or e.__context__
    assert any(isinstance(c, ConfigError) and "did you mean 'wsd'" in str(c) for c in causes)


def test_registry_rules():
    assert ScheduleConfig.register_subclass("wsd", WSDSchedule) is WSDSchedule  # again: harmless

    @dataclass(frozen=True)
    class Other(ScheduleConfig):
        """Another."""

        def build(self, ctx):
            return optax.constant_schedule(ctx.peak_lr)

    # The optimizers' rules (marin_optim.registry): a class outside marin_optim may take over a
    # built-in name, and is the one `type: wsd` then means; another clash raises naming both.
    try:
        assert ScheduleConfig.register_subclass("wsd", Other) is Other
        assert ScheduleConfig.get_choice_class("wsd") is Other
        assert ScheduleConfig.get_choice_name(WSDSchedule) == "wsd"  # still encodes by its name

        @dataclass(frozen=True)
        class Third(ScheduleConfig):
            """A third."""

            def build(self, ctx):
                return optax.constant_schedule(ctx.peak_lr)

        with pytest.raises(ConfigError, match="Other"):
            ScheduleConfig.register_subclass("wsd", Third)
    finally:
        ScheduleConfig._choice_registry["wsd"] = WSDSchedule
        ScheduleConfig._shadowed.pop(WSDSchedule, None)
    assert ScheduleConfig.get_choice_class("wsd") is WSDSchedule


def test_every_schedule_documents_itself():
    for name, cls in ScheduleConfig.registered().items():
        line = cls.describe()
        assert line and line != cls.__name__ and len(line) <= 110, name
        assert len((cls.__doc__ or "").strip().splitlines()) > 1, f"{name}: no formula in the docstring"


def test_key_steps():
    rows = key_steps("wsd", ctx())
    steps = [s for s, _ in rows]
    assert steps == sorted(set(steps))
    labels = dict(rows)
    assert steps[0] == 0 and steps[-2:] == [N - 1, N]
    assert "end of warmup" in labels[W] and "decay starts" in labels[80] and "mid-decay" in labels[90]
    rows = key_steps("cosine", ctx(cycles=2))
    assert any("cycle 2" in label for _, label in rows)
    for name in ScheduleConfig.registered():
        rows = key_steps(_example(name), ctx(num_train_steps=40, warmup=4))
        assert rows[0][0] == 0 and rows[-1][0] == 40


# -- jit -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(ScheduleConfig.registered()))
def test_jit_traced_step_without_recompiling(name):
    schedule = build_lr_schedule(_example(name), ctx(num_train_steps=40, warmup=4))
    traces = []

    def f(step):
        traces.append(None)
        return schedule(step)

    jitted = jax.jit(f)
    steps = [0, 3, 17, 39, 50]
    got = [float(jitted(jnp.int32(s))) for s in steps]
    assert len(traces) == 1
    eager = np.asarray(schedule(jnp.asarray(steps)))
    np.testing.assert_allclose(got, eager, rtol=1e-5)
    assert schedule(jnp.int32(3)).dtype == jnp.float32


def test_schedule_can_be_built_inside_a_trace_and_injected():
    c = ctx(num_train_steps=40, warmup=4)
    spec = _example("sequential")  # needs host values of its stages while building
    ref = np.asarray(build_lr_schedule(spec, c)(jnp.arange(40)))
    inside = jax.jit(lambda s: build_lr_schedule(spec, c)(s))(jnp.arange(40))
    np.testing.assert_allclose(np.asarray(inside), ref, rtol=1e-6)
    # the LR optax.inject_hyperparams sees at update k is the schedule at count k
    cosine = build_lr_schedule("cosine", c)
    tx = optax.inject_hyperparams(optax.sgd)(learning_rate=cosine)
    params = jnp.zeros(())
    state = tx.init(params)
    seen = []
    for _ in range(6):
        _, state = tx.update(jnp.ones(()), state, params)
        seen.append(float(state.hyperparams["learning_rate"]))
    np.testing.assert_allclose(seen, np.asarray(cosine(jnp.arange(6))), rtol=1e-6)


@pytest.mark.parametrize(
    "schedule, at_end",
    [
        ({"type": "cosine_linear_decay", "decay_min_lr": 2e-3}, 2e-3),
        ({"type": "power_lr", "decay_min_lr": 2e-3}, 2e-3),
        ({"type": "wsds", "decay_min_lr": 2e-3}, 2e-3),
        (
            {
                "type": "sequential",
                "schedules": ["constant", "constant"],
                "lengths": [50],
                "override_decay": {"start": 80, "duration": 10, "end_lr": 2e-3},
            },
            2e-3,
        ),
    ],
)
def test_a_second_branch_shares_the_whole_shape_its_absolute_rates_scaled(schedule, at_end):
    # Muon's AdamW branch at adam_lr = lr / 10: every absolute rate of the schedule scales too
    from marin_optim import AdamConfig

    cfg = AdamConfig(learning_rate=2e-2, lr_schedule=schedule, warmup=0.1)
    main, branch = cfg.lr_scheduler(100), cfg.lr_scheduler(100, override_lr=2e-3)
    assert float(main(100)) == pytest.approx(at_end, rel=1e-5)
    for step in (0, 5, 30, 60, 85, 100):
        assert float(branch(step)) == pytest.approx(float(main(step)) / 10, rel=1e-5)


def test_an_exponential_schedules_floor_scales_with_a_second_branch():
    from marin_optim import AdamConfig

    cfg = AdamConfig(learning_rate=2e-2, lr_schedule={"type": "exponential", "lr_min": 1e-3})
    branch = cfg.lr_scheduler(100, override_lr=6e-4)  # below lr_min: scaled, not refused
    assert float(branch(0)) == pytest.approx(1e-3 * 6e-4 / 2e-2, rel=1e-5)
