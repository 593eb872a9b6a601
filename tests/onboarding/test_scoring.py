"""The assessment matrix: hand-computed weighted scores, tier boundaries, versioning."""

from __future__ import annotations

from decimal import Decimal
from types import MappingProxyType

import pytest

from services.onboarding.scoring import (
    ASSESSMENT_MATRIX_V1,
    CRITERIA,
    InvalidScores,
    ScoringModel,
)


def scores(default: float = 8, **overrides: float) -> dict[str, float]:
    return {c: overrides.get(c, default) for c in CRITERIA}


def weighted(raw: dict[str, float]) -> Decimal:
    model = ASSESSMENT_MATRIX_V1
    return model.weighted_score(model.validated(raw))


def test_weights_are_the_seed_matrix() -> None:
    assert dict(ASSESSMENT_MATRIX_V1.weights) == {
        "technology_leadership": Decimal("0.25"),
        "market_position": Decimal("0.20"),
        "financial_stability": Decimal("0.20"),
        "strategic_fit": Decimal("0.15"),
        "integration_capability": Decimal("0.10"),
        "cultural_compatibility": Decimal("0.10"),
    }


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        # 9·.25 + 8·.20 + 7·.20 + 6·.15 + 5·.10 + 4·.10 = 2.25+1.6+1.4+0.9+0.5+0.4
        (dict(zip(CRITERIA, [9, 8, 7, 6, 5, 4], strict=True)), Decimal("7.05")),
        # 10·.25 + 1·.20 + 10·.20 + 1·.15 + 10·.10 + 1·.10 = 2.5+0.2+2+0.15+1+0.1
        (dict(zip(CRITERIA, [10, 1, 10, 1, 10, 1], strict=True)), Decimal("5.95")),
        (scores(1), Decimal("1")),
        (scores(10), Decimal("10")),
    ],
    ids=["descending", "alternating", "all-ones", "all-tens"],
)
def test_weighted_score_matches_hand_computation(raw: dict[str, float], expected: Decimal) -> None:
    assert weighted(raw) == expected


@pytest.mark.parametrize(
    ("raw", "expected_score", "tier"),
    [
        (scores(8), "8", "strategic"),
        # integration_capability 7.9 takes 0.01 off: 7.99 stays innovation.
        (scores(8, integration_capability=7.9), "7.99", "innovation"),
        (scores(6.5), "6.5", "innovation"),
        # cultural_compatibility 6.4 → 6.49
        (scores(6.5, cultural_compatibility=6.4), "6.49", "platform_integration"),
        (scores(5), "5", "platform_integration"),
        # technology_leadership 4.96 -> 5 - 0.04 * 0.25 = 4.99
        (scores(5, technology_leadership=4.96), "4.99", "not_recommended"),
        (scores(1), "1", "not_recommended"),
    ],
    ids=["8.0", "7.99", "6.5", "6.49", "5.0", "4.99", "1.0"],
)
def test_tier_boundaries(raw: dict[str, float], expected_score: str, tier: str) -> None:
    score = weighted(raw)
    assert score == Decimal(expected_score)
    assert ASSESSMENT_MATRIX_V1.tier_for(score) == tier


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({c: 5 for c in CRITERIA[:-1]}, "missing criteria: cultural_compatibility"),
        ({**scores(5), "charisma": 5}, "unknown criteria: charisma"),
        (scores(5, market_position=0), "market_position must be between 1 and 10"),
        (scores(5, market_position=10.5), "market_position must be between 1 and 10"),
        (scores(5, strategic_fit=7.125), "strategic_fit has more than two decimals"),
        (scores(5, strategic_fit=True), "strategic_fit must be a number"),
        (scores(5, strategic_fit=float("nan")), "strategic_fit must be between 1 and 10"),
    ],
    ids=["missing", "unknown", "zero", "above-ten", "three-decimals", "bool", "nan"],
)
def test_invalid_scores_are_named(raw: dict[str, float], message: str) -> None:
    with pytest.raises(InvalidScores, match=message):
        ASSESSMENT_MATRIX_V1.validated(raw)


def test_a_model_must_have_weights_summing_to_one() -> None:
    with pytest.raises(ValueError, match="sum to 1"):
        ScoringModel(
            name="broken",
            weights=MappingProxyType({"technology_leadership": Decimal("0.5")}),
            thresholds=((Decimal(5), "strategic"),),
        )
