"""The partner assessment matrix as versioned scoring models (seed 000 §3, DESIGN.md §3).

A `partner.assessed` event records the model's name, the weighted score and the tier it
recommended, so a later model (new weights or thresholds) never rewrites history: state
is rebuilt from what was recorded, not recomputed. Arithmetic is exact (`Decimal`) so a
score on a tier boundary (8.0) lands in the tier it reaches and 7.99 does not.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from types import MappingProxyType

from events.catalog import Tier

CRITERIA: tuple[str, ...] = (
    "technology_leadership",
    "market_position",
    "financial_stability",
    "strategic_fit",
    "integration_capability",
    "cultural_compatibility",
)
MIN_SCORE = Decimal(1)
MAX_SCORE = Decimal(10)
# Scores carry at most two decimals: enough for averaged committee marks.
SCORE_EXPONENT = -2


class InvalidScores(ValueError):
    """The scores do not fit the model: missing or unknown criteria, out of range."""


@dataclass(frozen=True, slots=True)
class ScoringModel:
    """Weights per criterion and the weighted-score thresholds of each tier."""

    name: str
    weights: Mapping[str, Decimal]
    # (minimum weighted score, tier), best tier first; below the last → not_recommended.
    thresholds: tuple[tuple[Decimal, Tier], ...]

    def __post_init__(self) -> None:
        if sum(self.weights.values(), Decimal(0)) != 1:
            raise ValueError(f"weights of {self.name} must sum to 1")
        floors = [floor for floor, _ in self.thresholds]
        if floors != sorted(floors, reverse=True):
            raise ValueError(f"thresholds of {self.name} must be in descending order")

    def validated(self, scores: Mapping[str, Decimal | int | float | str]) -> dict[str, Decimal]:
        """The scores as exact decimals, or `InvalidScores` naming what is wrong."""
        unknown = sorted(set(scores) - set(self.weights))
        missing = [c for c in self.weights if c not in scores]
        if unknown:
            raise InvalidScores(f"unknown criteria: {', '.join(unknown)}")
        if missing:
            raise InvalidScores(f"missing criteria: {', '.join(missing)}")
        exact: dict[str, Decimal] = {}
        for criterion in self.weights:
            value = scores[criterion]
            if isinstance(value, bool):
                raise InvalidScores(f"{criterion} must be a number")
            score = Decimal(str(value))
            if not score.is_finite() or not MIN_SCORE <= score <= MAX_SCORE:
                raise InvalidScores(f"{criterion} must be between {MIN_SCORE} and {MAX_SCORE}")
            exponent = score.normalize().as_tuple().exponent
            if isinstance(exponent, int) and exponent < SCORE_EXPONENT:
                raise InvalidScores(f"{criterion} has more than two decimals")
            exact[criterion] = score
        return exact

    def weighted_score(self, scores: Mapping[str, Decimal]) -> Decimal:
        """The sum of score times weight, exact."""
        return sum((scores[c] * w for c, w in self.weights.items()), Decimal(0)).normalize()

    def tier_for(self, weighted: Decimal) -> Tier:
        """The tier a weighted score reaches."""
        for floor, tier in self.thresholds:
            if weighted >= floor:
                return tier
        return "not_recommended"


ASSESSMENT_MATRIX_V1 = ScoringModel(
    name="assessment-matrix-v1",
    weights=MappingProxyType(
        {
            "technology_leadership": Decimal("0.25"),
            "market_position": Decimal("0.20"),
            "financial_stability": Decimal("0.20"),
            "strategic_fit": Decimal("0.15"),
            "integration_capability": Decimal("0.10"),
            "cultural_compatibility": Decimal("0.10"),
        }
    ),
    thresholds=(
        (Decimal("8.0"), "strategic"),
        (Decimal("6.5"), "innovation"),
        (Decimal("5.0"), "platform_integration"),
    ),
)

SCORING_MODELS: Mapping[str, ScoringModel] = MappingProxyType({ASSESSMENT_MATRIX_V1.name: ASSESSMENT_MATRIX_V1})
CURRENT_SCORING_MODEL = ASSESSMENT_MATRIX_V1
