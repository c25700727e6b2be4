"""BG/NBD purchase counts x Gamma-Gamma spend per occasion ("buy till you die").

The parameters are fitted by PyMC-Marketing (maximum a posteriori with flat priors, which
is maximum likelihood and reproduces Fader, Hardie and Lee's CDNOW estimates). Every
prediction is computed here in closed form with numpy/scipy from the seven fitted
numbers, so a fitted :class:`BTYDModel` pickles small and needs no PyMC to predict.

Time is measured in weeks (days / 7) inside the BG/NBD formulas; ``X`` and
``horizon_days`` stay in days at the interface.

References
----------
Fader, Hardie and Lee (2005), "Counting your customers the easy way: an alternative to the
Pareto/NBD model", Marketing Science 24(2). Fader, Hardie and Lee (2005), "RFM and CLV:
using iso-value curves for customer base analysis", JMR 42(4). Fader and Hardie (2013),
"The Gamma-Gamma model of monetary value" (note).
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import special

from clv_training.models.base import CLVModel, ModelFitError, finalize_prediction

logger = logging.getLogger(__name__)

FAMILY = "btyd"
DAYS_PER_WEEK = 7.0

#: Fewest repeat buyers with positive repeat spend that a Gamma-Gamma fit accepts.
MIN_REPEAT_BUYERS = 5
#: A shape parameter (r, a, b, p, q) outside this range means the optimiser ran off.
SHAPE_BOUNDS = (1e-6, 1e5)
#: Largest |d mean-objective / d log(parameter)| accepted at the optimum.
GRADIENT_TOLERANCE = 1e-3
#: Gauss-Jacobi nodes for the quadrature form of the expected purchases.
QUADRATURE_NODES = 64

_BGNBD_NAMES = ("r", "alpha", "a", "b")
_GG_NAMES = ("p", "q", "v")

# A prior spec is (distribution name, keyword arguments); pymc_extras Priors are built
# from it only inside the PyMC call, so the specs stay plain data.
PriorSpec = tuple[str, dict[str, float]]


@dataclass(frozen=True)
class BGNBDParams:
    """BG/NBD parameters, time in weeks.

    ``r, alpha``: gamma heterogeneity of the purchase rate (shape, rate); ``a, b``: beta
    heterogeneity of the drop-out probability after each purchase.
    """

    r: float
    alpha: float
    a: float
    b: float


@dataclass(frozen=True)
class GammaGammaParams:
    """Gamma-Gamma parameters of spend per repeat occasion (money units of ``X``).

    Mean spend per occasion in the population is ``p * v / (q - 1)`` (needs ``q > 1``).
    """

    p: float
    q: float
    v: float

    @property
    def population_mean_spend(self) -> float:
        """Expected spend per occasion of a customer with no repeat occasions yet."""
        return self.p * self.v / (self.q - 1.0)


# --------------------------------------------------------------------------------------
# The summary the BTYD models read: one row per customer, time in weeks.
# --------------------------------------------------------------------------------------


def btyd_summary(X: pd.DataFrame) -> pd.DataFrame:
    """Frequency, recency, T (weeks) and monetary value at the latest cutoff of ``X``.

    Parameters
    ----------
    X : pandas.DataFrame
        Customer features (times in days) with a ``cutoff`` column (optional: without it
        every row is used) and possibly ``customer_id``.

    Returns
    -------
    pandas.DataFrame
        Columns ``customer_id`` (str), ``frequency``, ``recency``, ``T`` (weeks) and
        ``monetary_value``, sorted by customer id so that row order in ``X`` does not
        change the fit.
    """
    rows = X
    if "cutoff" in X.columns and len(X):
        rows = X[X["cutoff"] == X["cutoff"].max()]
    summary = pd.DataFrame(
        {
            "frequency": rows["frequency"].to_numpy(dtype="float64"),
            "recency": rows["recency"].to_numpy(dtype="float64") / DAYS_PER_WEEK,
            "T": rows["T"].to_numpy(dtype="float64") / DAYS_PER_WEEK,
            "monetary_value": rows["monetary_value"].to_numpy(dtype="float64"),
        }
    )
    _check_rft(summary["frequency"], summary["recency"], summary["T"])
    if "customer_id" in rows.columns:
        summary.insert(0, "customer_id", rows["customer_id"].astype(str).to_numpy())
    elif rows.index.name == "customer_id":
        summary.insert(0, "customer_id", rows.index.astype(str).to_numpy())
    if "customer_id" in summary.columns:
        if summary["customer_id"].duplicated().any():
            raise ValueError("btyd: customer_id repeats within the latest cutoff")
        summary = summary.sort_values("customer_id", kind="stable")
    else:
        # Limitation: without ids, ties in (frequency, recency, T, monetary_value) keep
        # their input order; the fit is still identical because tied rows are equal.
        summary = summary.sort_values(
            ["frequency", "recency", "T", "monetary_value"], kind="stable"
        )
        summary.insert(0, "customer_id", [f"row{i}" for i in range(len(summary))])
    return summary.reset_index(drop=True)


def _check_rft(frequency: Any, recency: Any, T: Any) -> None:
    x, t_x, age = (np.asarray(v, dtype="float64") for v in (frequency, recency, T))
    problems = []
    for name, values in (("frequency", x), ("recency", t_x), ("T", age)):
        if not np.all(np.isfinite(values)):
            problems.append(f"{name} has non-finite values")
        elif np.any(values < 0):
            problems.append(f"{name} has negative values")
    if not problems and np.any(t_x > age * (1 + 1e-9) + 1e-9):
        problems.append(f"recency > T for {int(np.sum(t_x > age + 1e-9))} customers")
    if problems:
        raise ValueError("btyd: invalid (frequency, recency, T): " + "; ".join(problems))


# --------------------------------------------------------------------------------------
# Closed forms (all times in one unit, weeks in this module).
# --------------------------------------------------------------------------------------


def _as_arrays(*values: Any) -> tuple[np.ndarray, ...]:
    return tuple(np.asarray(v, dtype="float64") for v in values)


def bgnbd_log_likelihood(
    params: BGNBDParams, frequency: Any, recency: Any, T: Any
) -> np.ndarray:
    """Log-likelihood of each customer's (frequency, recency, T) under BG/NBD.

    Returns
    -------
    numpy.ndarray
        One value per customer; the sum is the log-likelihood of the sample.
    """
    r, alpha, a, b = params.r, params.alpha, params.a, params.b
    x, t_x, age = _as_arrays(frequency, recency, T)
    alive_term = (
        special.gammaln(r + x)
        - special.gammaln(r)
        + r * np.log(alpha)
        + special.betaln(a, b + x)
        - special.betaln(a, b)
        - (r + x) * np.log(alpha + age)
    )
    return alive_term + np.logaddexp(0.0, _log_dead_to_alive(params, x, t_x, age))


def _log_dead_to_alive(
    params: BGNBDParams, x: np.ndarray, t_x: np.ndarray, age: np.ndarray
) -> np.ndarray:
    """log of P(dropped out after the last purchase) / P(alive at T), -inf when x == 0."""
    r, alpha, a, b = params.r, params.alpha, params.a, params.b
    repeat = x > 0
    x_safe = np.where(repeat, x, 1.0)
    log_ratio = (
        np.log(a)
        - np.log(b + x_safe - 1.0)
        + (r + x_safe) * (np.log(alpha + age) - np.log(alpha + t_x))
    )
    return np.where(repeat, log_ratio, -np.inf)


def bgnbd_p_alive(params: BGNBDParams, frequency: Any, recency: Any, T: Any) -> np.ndarray:
    """Probability that each customer is still active at ``T`` (1 when frequency is 0)."""
    x, t_x, age = _as_arrays(frequency, recency, T)
    return special.expit(-_log_dead_to_alive(params, x, t_x, age))


def bgnbd_prob_no_purchase(
    params: BGNBDParams, frequency: Any, recency: Any, T: Any, t: float
) -> np.ndarray:
    """Probability of no purchase in ``(T, T + t]`` given (frequency, recency, T).

    A dead customer never buys again. An active one buys at rate lambda and can only drop
    out right after a purchase, so no purchase in ``t`` has probability
    ``exp(-lambda t)``; averaged over lambda's posterior Gamma(r + x, alpha + T) this is
    ``((alpha + T) / (alpha + T + t)) ** (r + x)``. Hence
    ``P0 = (1 - P(alive)) + P(alive) * ((alpha + T) / (alpha + T + t)) ** (r + x)``, which
    is exact, not an approximation.
    """
    x, t_x, age = _as_arrays(frequency, recency, T)
    alive = bgnbd_p_alive(params, x, t_x, age)
    no_purchase_if_alive = np.exp(
        (params.r + x) * (np.log(params.alpha + age) - np.log(params.alpha + age + t))
    )
    return np.clip(1.0 - alive + alive * no_purchase_if_alive, 0.0, 1.0)


def bgnbd_expected_purchases(
    params: BGNBDParams, frequency: Any, recency: Any, T: Any, t: float
) -> np.ndarray:
    """Expected number of purchases in ``(T, T + t]`` given (frequency, recency, T).

    Uses the closed form with the Gauss hypergeometric function ``2F1`` (Fader, Hardie
    and Lee 2005, eq. 10). Where that form is numerically unreliable (``a`` close to 1,
    overflow, or a value outside the bounds ``0 <= E <= P(alive) (r + x) t / (alpha + T)``
    that every customer satisfies), the same expectation is computed by Gauss-Jacobi
    quadrature over the posterior drop-out probability instead.
    """
    r, alpha, a, b = params.r, params.alpha, params.a, params.b
    x, t_x, age = _as_arrays(frequency, recency, T)
    x, t_x, age = np.broadcast_arrays(x, t_x, age)
    alive = bgnbd_p_alive(params, x, t_x, age)
    upper = alive * (r + x) * t / (alpha + age)

    with np.errstate(all="ignore"):
        log_ratio = (r + x) * (np.log(alpha + age) - np.log(alpha + age + t))
        hyp = special.hyp2f1(r + x, b + x, a + b + x - 1.0, t / (alpha + age + t))
        bracket = 1.0 - np.exp(log_ratio) * hyp
        closed = alive * (a + b + x - 1.0) / (a - 1.0) * bracket

    tolerance = 1e-8 * upper + 1e-12
    unreliable = (
        ~np.isfinite(closed) | (closed < -tolerance) | (closed > upper + tolerance)
    )
    if abs(a - 1.0) < 1e-3:
        unreliable[...] = True
    out = np.clip(np.where(unreliable, 0.0, closed), 0.0, upper)
    if unreliable.any():
        out[unreliable] = alive[unreliable] * _expected_purchases_if_alive_quadrature(
            params, x[unreliable], age[unreliable], t
        )
    return out


def _expected_purchases_if_alive_quadrature(
    params: BGNBDParams, x: np.ndarray, age: np.ndarray, t: float
) -> np.ndarray:
    """E[purchases in t | alive at T] by quadrature over p ~ Beta(a, b + x).

    Given lambda and p, an active customer makes ``(1 - exp(-lambda p t)) / p`` purchases
    on average in ``t``; lambda's posterior is Gamma(r + x, alpha + T), which gives
    ``(1 - ((alpha + T) / (alpha + T + p t)) ** (r + x)) / p``, a bounded smooth function
    of ``p`` integrated against the Beta(a, b + x) density with Gauss-Jacobi nodes. When
    ``a + b + x`` is so large that the Gauss-Jacobi weights overflow, Gauss-Legendre nodes
    on the Beta quantile function are used instead (relative error below about 1e-3).
    """
    out = np.empty(len(x), dtype="float64")
    for value in np.unique(x):
        rows = x == value
        p, weights = _beta_nodes(params.a, params.b + value)
        scale = (params.alpha + age[rows])[:, None]
        integrand = -np.expm1(-(params.r + value) * np.log1p(p[None, :] * t / scale))
        out[rows] = (integrand / p[None, :]) @ weights
    return out


def _beta_nodes(shape_a: float, shape_b: float) -> tuple[np.ndarray, np.ndarray]:
    """Nodes in (0, 1) and weights summing to 1 for expectations under Beta(a, b)."""
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        nodes, weights = special.roots_jacobi(QUADRATURE_NODES, shape_b - 1.0, shape_a - 1.0)
        total = weights.sum()
    if np.all(np.isfinite(weights)) and np.isfinite(total) and total > 0:
        return (1.0 + nodes) / 2.0, weights / total
    # Limitation: this fallback is accurate to about 1e-4 relative, not to 1e-10.
    u, w = np.polynomial.legendre.leggauss(2 * QUADRATURE_NODES)
    p = special.betaincinv(shape_a, shape_b, (u + 1.0) / 2.0)
    p = np.clip(p, np.finfo("float64").tiny, 1.0)
    return p, w / w.sum()


def gamma_gamma_log_likelihood(
    params: GammaGammaParams, frequency: Any, monetary_value: Any
) -> np.ndarray:
    """Log-likelihood of each repeat buyer's mean repeat spend under Gamma-Gamma."""
    p, q, v = params.p, params.q, params.v
    x, z = _as_arrays(frequency, monetary_value)
    return (
        special.gammaln(p * x + q)
        - special.gammaln(p * x)
        - special.gammaln(q)
        + q * np.log(v)
        + (p * x - 1.0) * np.log(z)
        + p * x * np.log(x)
        - (p * x + q) * np.log(x * z + v)
    )


def gamma_gamma_expected_spend(
    params: GammaGammaParams, frequency: Any, monetary_value: Any
) -> np.ndarray:
    """Expected spend per future occasion given x repeat occasions of mean value m.

    ``p (v + x m) / (p x + q - 1)``: a weighted mean of the population mean
    ``p v / (q - 1)`` and the customer's own mean ``m``; equals the population mean when
    ``x == 0``. Negative ``m`` (net refunds) is treated as 0.
    """
    x, m = _as_arrays(frequency, monetary_value)
    m = np.clip(m, 0.0, None)
    return params.p * (params.v + x * m) / (params.p * x + params.q - 1.0)


# --------------------------------------------------------------------------------------
# Fitting with PyMC-Marketing, with checks and one retry.
# --------------------------------------------------------------------------------------


def _map_fit(
    kind: str,
    data: pd.DataFrame,
    priors: Mapping[str, PriorSpec],
    start: Mapping[str, float] | None,
) -> dict[str, float]:
    """One MAP fit with PyMC-Marketing; return the fitted parameters.

    Parameters
    ----------
    kind : {"bgnbd", "gamma_gamma"}
        Which model.
    data : pandas.DataFrame
        ``customer_id, frequency, recency, T`` (BG/NBD) or ``customer_id, frequency,
        monetary_value`` (Gamma-Gamma).
    priors : mapping
        Prior spec per parameter; ``("HalfFlat", {})`` gives maximum likelihood.
    start : mapping, optional
        Starting values for the optimiser.
    """
    # PyMC is imported here only: prediction never needs it.
    from pymc_extras.prior import Prior
    from pymc_marketing.clv import BetaGeoModel, GammaGammaModel

    model_config = {name: Prior(dist, **kwargs) for name, (dist, kwargs) in priors.items()}
    model_cls = BetaGeoModel if kind == "bgnbd" else GammaGammaModel
    model = model_cls(model_config=model_config)
    fit_kwargs: dict[str, Any] = {"method": "map", "progressbar": False}
    if start:
        fit_kwargs["start"] = dict(start)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=UserWarning)
        model.fit(data=data, **fit_kwargs)
    posterior = model.idata.posterior
    return {name: float(posterior[name].values.ravel()[0]) for name in priors}


def _objective_gradient(
    objective: Callable[[np.ndarray], float], log_theta: np.ndarray, n: int
) -> np.ndarray:
    """Central-difference gradient of the mean objective in log-parameter space."""
    step = 1e-5
    grad = np.empty_like(log_theta)
    for i in range(len(log_theta)):
        up, down = log_theta.copy(), log_theta.copy()
        up[i] += step
        down[i] -= step
        grad[i] = (objective(up) - objective(down)) / (2.0 * step)
    return grad / max(n, 1)


def _log_prior(theta: Mapping[str, float], priors: Mapping[str, PriorSpec]) -> float:
    total = 0.0
    for name, (dist, kwargs) in priors.items():
        if dist == "HalfNormal":
            total -= theta[name] ** 2 / (2.0 * kwargs["sigma"] ** 2)
        elif dist != "HalfFlat":
            raise ValueError(f"btyd: no log-density for prior {dist}")
    return total


def _fit_problem(
    theta: Mapping[str, float],
    names: tuple[str, ...],
    shape_names: tuple[str, ...],
    log_likelihood: Callable[[Mapping[str, float]], float],
    priors: Mapping[str, PriorSpec],
    n: int,
) -> str | None:
    """Why a fitted parameter vector is not a usable optimum, or None if it is."""
    values = np.array([theta.get(name, np.nan) for name in names], dtype="float64")
    shown = ", ".join(f"{k}={theta.get(k, float('nan')):.6g}" for k in names)
    if not np.all(np.isfinite(values)):
        return f"non-finite parameters ({shown})"
    if np.any(values <= 0):
        return f"non-positive parameters ({shown})"
    low, high = SHAPE_BOUNDS
    for name in shape_names:
        if not low <= theta[name] <= high:
            return (
                f"parameter {name} ran off to {theta[name]:.3g} (outside [{low:g}, {high:g}]):"
                f" the data do not identify it ({shown})"
            )

    def objective(log_theta: np.ndarray) -> float:
        point = dict(zip(names, np.exp(log_theta), strict=True))
        return log_likelihood(point) + _log_prior(point, priors)

    base = objective(np.log(values))
    if not np.isfinite(base):
        return f"log-likelihood is not finite at the optimum ({shown})"
    grad = _objective_gradient(objective, np.log(values), n)
    if np.max(np.abs(grad)) > GRADIENT_TOLERANCE:
        worst = names[int(np.argmax(np.abs(grad)))]
        return (
            f"optimiser stopped away from an optimum: gradient {np.max(np.abs(grad)):.3g} per"
            f" customer in log({worst}) ({shown})"
        )
    return None


def _fit_with_retry(
    kind: str,
    data: pd.DataFrame,
    names: tuple[str, ...],
    shape_names: tuple[str, ...],
    log_likelihood: Callable[[Mapping[str, float]], float],
    penalized_priors: Mapping[str, PriorSpec],
    start: Mapping[str, float],
) -> tuple[dict[str, float], bool]:
    """Fit with flat priors; on failure retry once from ``start`` with weak priors.

    Returns the parameters and whether the retry was needed; raises ModelFitError with
    both attempts' causes when the retry fails too.
    """
    flat = {name: ("HalfFlat", {}) for name in names}
    causes = []
    for attempt, (priors, init) in enumerate(((flat, None), (penalized_priors, start))):
        try:
            theta = _map_fit(kind, data, priors, init)
        except Exception as exc:  # noqa: BLE001 - any optimiser failure is a fit failure
            causes.append(f"attempt {attempt + 1}: optimiser raised {type(exc).__name__}: {exc}")
            continue
        problem = _fit_problem(theta, names, shape_names, log_likelihood, priors, len(data))
        if problem is None:
            if attempt:
                logger.warning(
                    "btyd: %s needed a retry with weakly-informative priors (%s); first: %s",
                    kind,
                    ", ".join(f"{k}: {v[0]}({v[1]})" for k, v in penalized_priors.items()),
                    causes[0],
                )
            return theta, bool(attempt)
        causes.append(f"attempt {attempt + 1}: {problem}")
        logger.warning("btyd: %s fit attempt %d failed: %s", kind, attempt + 1, problem)
    raise ModelFitError(
        FAMILY,
        f"{kind} did not converge on {len(data)} customers; " + "; ".join(causes),
        {"n_customers": float(len(data))},
    )


def fit_bgnbd(summary: pd.DataFrame) -> tuple[BGNBDParams, bool]:
    """Fit BG/NBD by maximum likelihood (PyMC-Marketing MAP, flat priors).

    On non-convergence the fit is retried once from a sane start with weakly-informative
    HalfNormal priors (a small penalty in the spirit of lifetimes' penalizer).

    Parameters
    ----------
    summary : pandas.DataFrame
        ``customer_id, frequency, recency, T`` with time in weeks.

    Returns
    -------
    (BGNBDParams, bool)
        The parameters and whether the penalised retry was used.
    """
    n_repeat = int((summary["frequency"] > 0).sum())
    if len(summary) < 2 or n_repeat == 0:
        raise ModelFitError(
            FAMILY,
            f"BG/NBD needs repeat buyers: {n_repeat} of {len(summary)} customers at the latest"
            " cutoff bought more than once",
            {"n_customers": float(len(summary)), "n_repeat_buyers": float(n_repeat)},
        )
    data = summary[["customer_id", "frequency", "recency", "T"]]
    x, t_x, age = (data[c].to_numpy() for c in ("frequency", "recency", "T"))
    mean_t = max(float(np.mean(age)), 1e-3)
    rate = max(float(np.mean(x)), 0.1) / mean_t
    start = {"r": 1.0, "alpha": 1.0 / rate, "a": 1.0, "b": 3.0}
    penalized = {
        "r": ("HalfNormal", {"sigma": 10.0}),
        "alpha": ("HalfNormal", {"sigma": 10.0 * max(mean_t, 1.0 / rate)}),
        "a": ("HalfNormal", {"sigma": 10.0}),
        "b": ("HalfNormal", {"sigma": 10.0}),
    }

    def log_likelihood(theta: Mapping[str, float]) -> float:
        return float(np.sum(bgnbd_log_likelihood(BGNBDParams(**theta), x, t_x, age)))

    theta, retried = _fit_with_retry(
        "bgnbd", data, _BGNBD_NAMES, ("r", "a", "b"), log_likelihood, penalized, start
    )
    return BGNBDParams(**theta), retried


def gamma_gamma_rows(summary: pd.DataFrame) -> pd.DataFrame:
    """Repeat buyers whose mean repeat spend is positive: the Gamma-Gamma sample.

    A repeat buyer whose repeat occasions sum to 0 (or less) has no positive mean spend
    and would put log(0) into the likelihood; such customers are left out of the fit
    (they are still scored, with the population mean shrunk towards their 0).
    """
    keep = (summary["frequency"] > 0) & (summary["monetary_value"] > 0)
    return summary.loc[keep, ["customer_id", "frequency", "monetary_value"]]


def fit_gamma_gamma(summary: pd.DataFrame) -> tuple[GammaGammaParams, bool]:
    """Fit Gamma-Gamma on the repeat buyers with positive mean repeat spend.

    Raises
    ------
    ModelFitError
        Too few repeat buyers, no convergence after a retry, or ``q <= 1`` (the population
        mean spend ``p v / (q - 1)`` would be infinite or negative: heavy-tailed spend).
    """
    data = gamma_gamma_rows(summary)
    n_zero = int(((summary["frequency"] > 0) & (summary["monetary_value"] <= 0)).sum())
    if n_zero:
        logger.info(
            "btyd: %d repeat buyers with repeat spend <= 0 left out of Gamma-Gamma", n_zero
        )
    if len(data) < MIN_REPEAT_BUYERS:
        raise ModelFitError(
            FAMILY,
            f"Gamma-Gamma needs at least {MIN_REPEAT_BUYERS} repeat buyers with positive repeat"
            f" spend, got {len(data)}",
            {"n_repeat_buyers": float(len(data))},
        )
    x, z = data["frequency"].to_numpy(), data["monetary_value"].to_numpy()
    median_spend = float(np.median(z))
    start = {"p": 2.0, "q": 3.0, "v": median_spend}
    penalized = {
        "p": ("HalfNormal", {"sigma": 10.0}),
        "q": ("HalfNormal", {"sigma": 10.0}),
        "v": ("HalfNormal", {"sigma": 10.0 * median_spend}),
    }

    def log_likelihood(theta: Mapping[str, float]) -> float:
        return float(np.sum(gamma_gamma_log_likelihood(GammaGammaParams(**theta), x, z)))

    theta, retried = _fit_with_retry(
        "gamma_gamma", data, _GG_NAMES, ("p", "q"), log_likelihood, penalized, start
    )
    params = GammaGammaParams(**theta)
    check_gamma_gamma(params, len(data))
    return params, retried


def check_gamma_gamma(params: GammaGammaParams, n_customers: int = 0) -> None:
    """Raise ModelFitError unless ``q > 1`` (finite, positive population mean spend)."""
    if not params.q > 1.0:
        raise ModelFitError(
            FAMILY,
            f"Gamma-Gamma q={params.q:.4g} <= 1 (p={params.p:.4g}, v={params.v:.4g}) on"
            f" {n_customers} repeat buyers: mean spend p*v/(q-1) is undefined, spend per"
            " occasion is too heavy-tailed for this model",
            {**asdict(params), "n_repeat_buyers": float(n_customers)},
        )


# --------------------------------------------------------------------------------------
# The model family.
# --------------------------------------------------------------------------------------


class BTYDModel(CLVModel):
    """BG/NBD expected occasions x Gamma-Gamma expected spend per occasion.

    Parameters
    ----------
    horizon_days : int
        Prediction window in days.
    seed : int
        Seed of the optional subsample.
    max_fit_customers : int, optional
        Fit BG/NBD on a seeded random subsample of this many customers (huge inputs).

    Attributes
    ----------
    bgnbd_ : BGNBDParams
        Fitted BG/NBD parameters (weeks).
    gamma_gamma_ : GammaGammaParams
        Fitted Gamma-Gamma parameters.
    """

    name = FAMILY

    def __init__(
        self, horizon_days: int, seed: int = 0, max_fit_customers: int | None = None
    ) -> None:
        super().__init__(horizon_days, seed)
        if max_fit_customers is not None and max_fit_customers < 2:
            raise ValueError(f"btyd: max_fit_customers must be >= 2, got {max_fit_customers}")
        self.max_fit_customers = max_fit_customers
        self.bgnbd_: BGNBDParams | None = None
        self.gamma_gamma_: GammaGammaParams | None = None
        self._diagnostics: dict[str, float] = {}

    @classmethod
    def from_parameters(
        cls,
        bgnbd: BGNBDParams,
        gamma_gamma: GammaGammaParams,
        horizon_days: int,
        seed: int = 0,
    ) -> BTYDModel:
        """A model with given parameters (no fit), for tests and what-if scoring."""
        check_gamma_gamma(gamma_gamma)
        model = cls(horizon_days, seed)
        model.bgnbd_, model.gamma_gamma_ = bgnbd, gamma_gamma
        return model

    def fit(self, X: pd.DataFrame, y: np.ndarray | None = None) -> BTYDModel:
        """Fit both models on the rows of ``X`` at its latest cutoff (``y`` is unused)."""
        started = time.perf_counter()
        summary = btyd_summary(X)
        bg_sample = summary
        if self.max_fit_customers is not None and len(summary) > self.max_fit_customers:
            rng = np.random.default_rng(self.seed)
            rows = np.sort(rng.choice(len(summary), self.max_fit_customers, replace=False))
            bg_sample = summary.iloc[rows]
            logger.info(
                "btyd: BG/NBD fit on a seeded sample of %d of %d customers",
                len(bg_sample),
                len(summary),
            )
        self.bgnbd_, bg_retried = fit_bgnbd(bg_sample)
        bg_seconds = time.perf_counter() - started
        self.gamma_gamma_, gg_retried = fit_gamma_gamma(summary)
        seconds = time.perf_counter() - started

        x, t_x, age = (bg_sample[c].to_numpy() for c in ("frequency", "recency", "T"))
        n_gg = len(gamma_gamma_rows(summary))
        self._diagnostics = {
            **{name: float(v) for name, v in asdict(self.bgnbd_).items()},
            **{name: float(v) for name, v in asdict(self.gamma_gamma_).items()},
            "bgnbd_log_likelihood": float(
                np.sum(bgnbd_log_likelihood(self.bgnbd_, x, t_x, age))
            ),
            "population_mean_spend": self.gamma_gamma_.population_mean_spend,
            "n_fit_customers": float(len(bg_sample)),
            "n_customers": float(len(summary)),
            "n_gamma_gamma_customers": float(n_gg),
            "bgnbd_retried": float(bg_retried),
            "gamma_gamma_retried": float(gg_retried),
            "fit_seconds": seconds,
        }
        logger.info(
            "btyd: fitted in %.1f s (BG/NBD %.1f s on %d customers: r=%.4g alpha=%.4g a=%.4g"
            " b=%.4g; Gamma-Gamma on %d repeat buyers: p=%.4g q=%.4g v=%.4g)",
            seconds,
            bg_seconds,
            len(bg_sample),
            *asdict(self.bgnbd_).values(),
            n_gg,
            *asdict(self.gamma_gamma_).values(),
        )
        return self

    def _fitted(self) -> tuple[BGNBDParams, GammaGammaParams]:
        if self.bgnbd_ is None or self.gamma_gamma_ is None:
            raise RuntimeError("btyd: call fit before predicting")
        return self.bgnbd_, self.gamma_gamma_

    @staticmethod
    def _rft_weeks(X: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        x = X["frequency"].to_numpy(dtype="float64")
        t_x = X["recency"].to_numpy(dtype="float64") / DAYS_PER_WEEK
        age = X["T"].to_numpy(dtype="float64") / DAYS_PER_WEEK
        _check_rft(x, t_x, age)
        return x, t_x, age

    def _horizon_weeks(self, horizon_days: float | None) -> float:
        return float(self.horizon_days if horizon_days is None else horizon_days) / DAYS_PER_WEEK

    def expected_purchases(self, X: pd.DataFrame, horizon_days: float | None = None) -> np.ndarray:
        """Expected purchase occasions in the next ``horizon_days`` (default the model's)."""
        bgnbd, _ = self._fitted()
        x, t_x, age = self._rft_weeks(X)
        return bgnbd_expected_purchases(bgnbd, x, t_x, age, self._horizon_weeks(horizon_days))

    def expected_spend(self, X: pd.DataFrame) -> np.ndarray:
        """Expected spend per future occasion (Gamma-Gamma conditional mean)."""
        _, gamma_gamma = self._fitted()
        return gamma_gamma_expected_spend(
            gamma_gamma, X["frequency"].to_numpy(dtype="float64"), X["monetary_value"]
        )

    def p_alive(self, X: pd.DataFrame) -> np.ndarray:
        """Probability that each customer is still active at the cutoff."""
        bgnbd, _ = self._fitted()
        return bgnbd_p_alive(bgnbd, *self._rft_weeks(X))

    def prob_no_purchase(self, X: pd.DataFrame, horizon_days: float | None = None) -> np.ndarray:
        """Probability of no purchase in the next ``horizon_days`` under BG/NBD."""
        bgnbd, _ = self._fitted()
        x, t_x, age = self._rft_weeks(X)
        return bgnbd_prob_no_purchase(bgnbd, x, t_x, age, self._horizon_weeks(horizon_days))

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        """Expected spend over ``horizon_days``: expected occasions x spend per occasion."""
        spend = self.expected_purchases(X) * self.expected_spend(X)
        return finalize_prediction(spend, len(X), self.name)

    def fit_diagnostics(self) -> dict[str, float]:
        """Fitted parameters, BG/NBD log-likelihood, customer counts and fit seconds."""
        if not self._diagnostics and self.bgnbd_ is not None and self.gamma_gamma_ is not None:
            return {**asdict(self.bgnbd_), **asdict(self.gamma_gamma_)}
        return dict(self._diagnostics)
