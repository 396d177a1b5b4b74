"""The ``ntkit finite-width`` figure: the quick run through the command, its numbers and its files.

Tolerances. A fitted log-log slope carries a statistical standard error (from the points'
standard errors, ``fit_slope``) and a systematic one: the error c1/n + c2/n^2 has local slope
-1 - (c2/c1)/n + O(n^-2), and (c2/c1)/n is measured in the same run as the ratio of the
corrected to the uncorrected error at that width. So the infinite-width slope must lie within
4 standard errors plus the largest such ratio over the fitted widths of -1.
"""

import contextlib
import io
import json
import math
from importlib.util import find_spec

import numpy as np
import pytest

from ntkit import NtkitError
from ntkit import finite_width_figure as fwf
from ntkit.cli import main

needs_matplotlib = pytest.mark.skipif(find_spec("matplotlib") is None, reason="needs pip install ntkit[plot]")


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """``ntkit finite-width --quick`` once: (the result run returned, what the command printed)."""
    out = tmp_path_factory.mktemp("finite-width")
    returned = []

    def spy(**kwargs):
        returned.append(run(**kwargs))
        return returned[-1]

    run = fwf.run
    printed = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(printed):
        patch.setattr(fwf, "run", spy)
        status = main(["finite-width", "--quick", "--no-progress", "--threads", "2", "--out", str(out)])
    assert status == 0 and len(returned) == 1
    return returned[0], printed.getvalue()


@needs_matplotlib
def test_quick_run_writes_a_figure_and_numbers_that_agree(quick):
    result, printed = quick
    assert result.widths == fwf.QUICK_WIDTHS and result.ntk_networks == fwf.QUICK_NETWORKS
    assert result.nngp_networks == tuple(m + e for m, e in zip(fwf.QUICK_NETWORKS, fwf.QUICK_NNGP_NETWORKS))
    assert result.figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert str(result.figure.resolve()) in printed and str(result.summary.resolve()) in printed
    summary = json.loads(result.summary.read_text())
    assert summary["widths"] == list(result.widths) and summary["ntk_networks"] == list(result.ntk_networks)
    assert summary["nngp_networks"] == list(result.nngp_networks)
    assert summary["activation"] == "tanh" and summary["depth"] == fwf.DEFAULT_DEPTH["tanh"]
    for name in fwf.KERNELS:
        errors, saved = getattr(result, name), summary[name]
        for key, field in (("infinite_width_error", "error"), ("infinite_width_error_se", "error_se"),
                           ("infinite_width_error_upper_bound", "error_bound"), ("corrected_error", "corrected"),
                           ("corrected_error_se", "corrected_se"), ("corrected_error_upper_bound", "corrected_bound"),
                           ("resolvable_threshold", "threshold"), ("predicted_leading_error", "predicted")):
            # JSON floats round-trip; an infinite standard error (an error that reads 0) is null.
            expected = [v if math.isfinite(v) else None for v in getattr(errors, field).tolist()]
            assert saved[key] == expected, (name, key)
        assert saved["corrected_resolved"] == errors.corrected_resolved.tolist()
        assert saved["infinite_width_resolved"] == errors.resolved.tolist()
        assert saved["infinite_width_slope"]["slope"] == errors.slope.slope
        corrected = saved["corrected_slope"]["slope"]
        fit = errors.corrected_slope.slope
        assert (corrected is None) if math.isnan(fit) else corrected == fit
        # The printed table shows the same numbers.
        assert f"{errors.error[0]:.2e} ± {errors.error_se[0]:.1e}" in printed
        assert f"{errors.slope.slope:+.2f} ± {errors.slope.se:.2f}" in printed


@needs_matplotlib
@pytest.mark.parametrize("name", fwf.KERNELS)
def test_infinite_width_error_falls_as_one_over_width(quick, name):
    errors = getattr(quick[0], name)
    fit = errors.slope
    assert fit.points >= 3, errors  # the quick defaults resolve the leading error at three widths or more
    # 4 s.e. of the fit plus the measured O(1/n^2) bend of the local slope (module docstring).
    bend = float(np.max(errors.corrected[errors.resolved] / errors.error[errors.resolved]))
    assert abs(fit.slope + 1) <= 4 * fit.se + bend, (fit, bend)


@needs_matplotlib
@pytest.mark.parametrize("name", fwf.KERNELS)
def test_the_correction_removes_the_leading_error_where_it_is_resolved(quick, name):
    errors = getattr(quick[0], name)
    resolved = errors.resolved
    # The corrected error's upper bound (its squared error + 2 s.d.; the error itself where the
    # noise hides it) lies below the uncorrected error less 3 of its standard errors.
    assert np.all(errors.corrected_bound[resolved] < (errors.error - 3 * errors.error_se)[resolved]), errors
    assert resolved[0]  # at width 8 the leading error stands far above the noise


def test_a_wrong_correction_is_rejected_by_the_same_statistics():
    """Negative control: ``_errors`` with the correction's sign flipped reports a larger error than
    with no correction, and the right correction a smaller one, at width 8 (a second of sampling)."""
    from ntkit.finite_width import corrections

    x = fwf.inputs()
    theory = corrections(fwf.network(8), x)
    samples = fwf._sample(fwf.network(8), x, 20_000, (1, 8, 0), False, lambda done: None)
    right = fwf._errors([samples[0]], theory.nngp, theory.nngp_correction, (8,))
    wrong = fwf._errors([samples[0]], theory.nngp, -theory.nngp_correction, (8,))
    margin = 3 * (right.error_se + wrong.corrected_se)
    assert right.corrected[0] + margin[0] < right.error[0] < wrong.corrected[0] - margin[0]


def test_fit_slope_recovers_a_power_law_and_its_standard_error():
    widths = np.array([8, 16, 32, 64])
    error = 3.0 * widths**-2.0
    se = 0.1 * error  # a 10% error in each point: Var(log error) = 0.01
    fit = fwf.fit_slope(widths, error, se, np.ones(4, dtype=bool))
    assert fit.slope == pytest.approx(-2.0, abs=1e-12) and math.exp(fit.intercept) == pytest.approx(3.0, rel=1e-12)
    x = np.log(widths)  # equal weights: se = 0.1 / sqrt(sum (x - mean x)^2)
    assert fit.se == pytest.approx(0.1 / math.sqrt(np.sum((x - x.mean()) ** 2)), rel=1e-12)
    assert math.isnan(fwf.fit_slope(widths, error, se, [True, False, False, False]).slope)


def test_bad_options_are_named(tmp_path):
    for kwargs, pattern in (
        (dict(activation="relu"), r"unknown activation 'relu'; choose one of \['tanh', 'gelu'\]"),
        (dict(depth=2), r"depth must be an integer >= 3 .* got 2"),
        (dict(widths=(16,)), r"widths must be at least two distinct integers >= 2, got \(16,\)"),
        (dict(widths=(8, 8)), r"widths must be at least two distinct integers >= 2, got \(8, 8\)"),
        (dict(widths=(1, 8)), r"widths must be at least two distinct integers >= 2, got \(1, 8\)"),
        (dict(widths=(8, 16), n_networks=(100,)),
         r"n_networks must be an integer >= 2 or one per width \(2\), got \(100,\)"),
        (dict(n_networks=1), r"n_networks must be an integer >= 2 or one per width \(7\), got 1"),
        (dict(nngp_networks=-1), r"nngp_networks must be an integer >= 0 or one per width \(7\), got -1"),
    ):
        with pytest.raises(NtkitError, match=pattern):
            fwf.run(out=tmp_path, progress=False, **kwargs)
    assert not any(tmp_path.iterdir())  # options are checked before anything is written


def test_cli_rejects_an_unknown_activation(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["finite-width", "--activation", "relu"])
    assert exit_.value.code == 2
    assert "invalid choice: 'relu'" in capsys.readouterr().err
