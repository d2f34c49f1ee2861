"""Champion against Challenger on live traffic: each arm's error, the rmse ratio with an interval, a verdict.

The arms' labelled rows reduce to sums (of squared, fourth-power and absolute errors), so Spark
computes them in one pass over the inference log. The interval on log(rmse ratio) comes from
the delta method: log(MSE) has variance var(e²) / (n · MSE²). On shadow rows both versions
scored the same trips, and the paired form uses their covariance, which narrows the interval.

The comparison is looked at repeatedly while a rollout runs, so each look spends a share of the
error rate (Bonferroni over the planned looks): a Challenger that is no worse is rolled back in
fewer than ``alpha`` of rollouts, whatever the number of looks up to the plan.
"""
import math
from dataclasses import dataclass

from scipy.stats import norm

from mlops.errors import ConfigError

PROMOTE = "promote"
KEEP = "keep"
NOT_ENOUGH_DATA = "not enough data"


@dataclass(frozen=True)
class ArmErrors:
    """An arm's labelled rows, as sums of its errors' powers."""

    rows: int
    sum_squared: float
    sum_fourth: float
    sum_absolute: float

    @classmethod
    def of(cls, errors) -> "ArmErrors":
        import numpy as np

        errors = np.asarray(errors, dtype=float)
        squared = errors * errors
        return cls(len(errors), float(squared.sum()), float((squared * squared).sum()),
                   float(np.abs(errors).sum()))

    def __add__(self, other: "ArmErrors") -> "ArmErrors":
        return ArmErrors(self.rows + other.rows, self.sum_squared + other.sum_squared,
                         self.sum_fourth + other.sum_fourth, self.sum_absolute + other.sum_absolute)

    @property
    def mse(self) -> float:
        return self.sum_squared / self.rows

    @property
    def rmse(self) -> float:
        return math.sqrt(self.mse)

    @property
    def mae(self) -> float:
        return self.sum_absolute / self.rows

    @property
    def relative_variance(self) -> float:
        """var(e²) / MSE²: 2 for normal errors, more for heavy tails."""
        return max(self.sum_fourth / self.rows / self.mse ** 2 - 1.0, 1e-12)


@dataclass(frozen=True)
class PairedErrors:
    """Shadow rows: both versions' errors on the same trips, with their cross term."""

    champion: ArmErrors
    challenger: ArmErrors
    sum_cross: float

    @classmethod
    def of(cls, champion_errors, challenger_errors) -> "PairedErrors":
        import numpy as np

        champion_errors = np.asarray(champion_errors, dtype=float)
        challenger_errors = np.asarray(challenger_errors, dtype=float)
        return cls(ArmErrors.of(champion_errors), ArmErrors.of(challenger_errors),
                   float((champion_errors ** 2 * challenger_errors ** 2).sum()))

    def log_ratio_variance(self) -> float:
        """var of log(rmse ratio) by the delta method on the pairs' squared errors."""
        rows = self.champion.rows
        a, b = self.champion.mse, self.challenger.mse
        covariance = self.sum_cross / rows / (a * b) - 1.0
        return max(0.25 * (self.champion.relative_variance + self.challenger.relative_variance
                           - 2.0 * covariance) / rows, 1e-18)


@dataclass(frozen=True)
class ComparisonSettings:
    """What counts as worse, how sure a verdict must be, and how many looks the rollout plans."""

    margin: float = 0.05
    alpha: float = 0.05
    planned_looks: int = 6
    min_rows_per_arm: int = 100

    def __post_init__(self):
        if not 0 < self.alpha < 1:
            raise ConfigError(f"the comparison's alpha must be between 0 and 1, got {self.alpha}")
        if not 0 <= self.margin < 1:
            raise ConfigError(f"the comparison's margin must be at least 0 and below 1, got {self.margin}")
        if self.planned_looks < 1:
            raise ConfigError(f"the comparison needs at least 1 planned look, got {self.planned_looks}")

    @property
    def z(self) -> float:
        """The one-sided critical value of one look."""
        return float(norm.ppf(1.0 - self.alpha / self.planned_looks))


@dataclass(frozen=True)
class Comparison:
    """The verdict on one look, and the evidence behind it."""

    verdict: str
    champion_rows: int
    challenger_rows: int
    champion_rmse: float
    challenger_rmse: float
    champion_mae: float
    challenger_mae: float
    rmse_ratio: float
    ratio_low: float
    ratio_high: float
    paired: bool
    rows_needed: int

    def line(self) -> str:
        kind = "paired shadow rows" if self.paired else "split rows"
        needed = f"; about {self.rows_needed:,} more labelled rows needed" if self.rows_needed else ""
        return (f"{self.verdict}: challenger rmse {self.challenger_rmse:.3f} against champion "
                f"{self.champion_rmse:.3f} (ratio {self.rmse_ratio:.3f}, interval {self.ratio_low:.3f} to "
                f"{self.ratio_high:.3f}; {self.champion_rows:,} and {self.challenger_rows:,} {kind}){needed}")


def compare(champion: ArmErrors, challenger: ArmErrors, settings: ComparisonSettings = ComparisonSettings(),
            paired: PairedErrors | None = None) -> Comparison:
    """Promote (no worse than ``margin``), keep (significantly worse), or not enough data yet."""
    if paired is not None:
        champion, challenger = paired.champion, paired.challenger
    evidence = dict(champion_rows=champion.rows, challenger_rows=challenger.rows, paired=paired is not None)
    if min(champion.rows, challenger.rows) < settings.min_rows_per_arm or 0 in (champion.mse, challenger.mse):
        short = max(settings.min_rows_per_arm - min(champion.rows, challenger.rows), 1)
        nan = float("nan")
        return Comparison(NOT_ENOUGH_DATA, champion_rmse=champion.rmse if champion.rows else nan,
                          challenger_rmse=challenger.rmse if challenger.rows else nan,
                          champion_mae=champion.mae if champion.rows else nan,
                          challenger_mae=challenger.mae if challenger.rows else nan, rmse_ratio=nan,
                          ratio_low=nan, ratio_high=nan, rows_needed=short * 2, **evidence)
    log_ratio = 0.5 * math.log(challenger.mse / champion.mse)
    variance = paired.log_ratio_variance() if paired is not None else 0.25 * (
        champion.relative_variance / champion.rows + challenger.relative_variance / challenger.rows)
    half_width = settings.z * math.sqrt(variance)
    low, high = log_ratio - half_width, log_ratio + half_width
    tolerated = math.log1p(settings.margin)
    if low > 0:
        verdict = KEEP
    elif high < tolerated:
        verdict = PROMOTE
    else:
        verdict = NOT_ENOUGH_DATA
    rows_needed = 0
    if verdict == NOT_ENOUGH_DATA:
        # The interval narrows as 1/sqrt(rows): the rows at which it would clear the nearer bound.
        target = max(tolerated - log_ratio, log_ratio, tolerated / 4)
        rows = champion.rows + challenger.rows
        rows_needed = max(math.ceil(rows * (half_width / target) ** 2) - rows, 1)
    return Comparison(verdict, champion_rmse=champion.rmse, challenger_rmse=challenger.rmse,
                      champion_mae=champion.mae, challenger_mae=challenger.mae,
                      rmse_ratio=math.exp(log_ratio), ratio_low=math.exp(low), ratio_high=math.exp(high),
                      rows_needed=rows_needed, **evidence)


def planned_rows(relative_variance: float, challenger_share: float, worse_ratio: float = 1.1,
                 power: float = 0.95, settings: ComparisonSettings = ComparisonSettings()) -> int:
    """Labelled rows a split needs to roll back a Challenger ``worse_ratio`` times the Champion's rmse."""
    if not 0 < challenger_share < 1:
        raise ConfigError(f"the challenger's share must be between 0 and 1, got {challenger_share}")
    if worse_ratio <= 1:
        raise ConfigError(f"a worse challenger's rmse ratio must be above 1, got {worse_ratio}")
    spread = settings.z + float(norm.ppf(power))
    per_row = 0.25 * relative_variance * (1 / challenger_share + 1 / (1 - challenger_share))
    return math.ceil(per_row * (spread / math.log(worse_ratio)) ** 2)


HOLD = "hold"
STEP_UP = "step up"
ROLL_BACK = "roll back"


@dataclass(frozen=True)
class RolloutDecision:
    action: str
    share: int
    reason: str


@dataclass(frozen=True)
class RolloutPlan:
    """The Challenger's traffic shares in percent, ending at 100, and the labelled rows each step needs."""

    shares: tuple
    rows_per_step: int

    @classmethod
    def parse(cls, text: str, rows_per_step: int) -> "RolloutPlan":
        try:
            shares = tuple(int(part) for part in text.split(","))
        except ValueError:
            raise ConfigError(f"a rollout plan is percentages separated by commas, such as 10,50,100; "
                              f"got '{text}'") from None
        if not shares or shares[-1] != 100 or any(not 0 < share <= 100 for share in shares) \
                or list(shares) != sorted(set(shares)):
            raise ConfigError(f"a rollout plan rises from above 0 to 100, such as 10,50,100; got '{text}'")
        if rows_per_step < 1:
            raise ConfigError(f"a rollout step needs at least 1 labelled row, got {rows_per_step}")
        return cls(shares, rows_per_step)

    @classmethod
    def for_power(cls, text: str, relative_variance: float, settings: ComparisonSettings,
                  worse_ratio: float = 1.1, power: float = 0.95) -> "RolloutPlan":
        """A plan whose steps before 100 together roll back a ``worse_ratio`` Challenger at ``power``.

        Sized as if every row came at the first step's share, the smallest: later steps only narrow
        the interval sooner.
        """
        shares = cls.parse(text, 1).shares
        if len(shares) < 2:
            raise ConfigError(f"a rollout plan needs a step below 100 to compare at; got '{text}'")
        budget = planned_rows(relative_variance, shares[0] / 100, worse_ratio, power, settings)
        return cls(shares, math.ceil(budget / (len(shares) - 1)))

    @property
    def planned_rows(self) -> int:
        """The labelled rows of every step before 100."""
        return self.rows_per_step * (len(self.shares) - 1)

    def decide(self, share: int, rows_at_step: int, comparison: Comparison) -> RolloutDecision:
        """What the rollout does after a look at ``share`` percent with ``rows_at_step`` labelled rows."""
        if share not in self.shares:
            raise ConfigError(f"share {share}% is not a step of the plan {','.join(map(str, self.shares))}")
        if comparison.verdict == KEEP:
            return RolloutDecision(ROLL_BACK, 0, f"the challenger is worse: {comparison.line()}")
        if rows_at_step < self.rows_per_step:
            return RolloutDecision(HOLD, share, f"{rows_at_step:,} of {self.rows_per_step:,} labelled rows "
                                                f"at {share}%")
        following = self.shares[self.shares.index(share) + 1] if share != 100 else 100
        if following < 100:
            return RolloutDecision(STEP_UP, following, f"not worse so far: {comparison.line()}")
        if comparison.verdict == PROMOTE:
            return RolloutDecision(PROMOTE, 100, f"no worse than the champion: {comparison.line()}")
        return RolloutDecision(HOLD, share, f"not yet shown no worse: {comparison.line()}")
