"""The online evidence next to an evaluation run's offline scores: what users said in the lake about the same
model, model version and prompt version the run's target names.

Counted from the lake's `interactions` view (each inference with its feedback aggregated, defined once in
`warehouse.query`), per inference as the drift stage's feedback features count them, so one chatty user's ten
thumbs on one answer weigh as one answer:
- `thumbs_up_rate`: mean over the inferences with thumbs of their share of thumbs up; `thumbs_n` such inferences.
- `rating_mean`: mean over the inferences with ratings of their mean rating, each rating scaled to [0, 1] by its
  own scale; `rating_n` such inferences.
- `correction_rate`, `flag_rate`: share of all `inferences` with at least one correction (flag).
All the feedback landed so far counts (unlike a drift run, no maturity horizon): a version served only recently
has had less time to collect corrections, which the sample sizes make visible.
"""

from __future__ import annotations

from dataclasses import dataclass

from flywheel.config import Settings
from flywheel.warehouse.evaluation.runs import RunTarget, run_target
from flywheel.warehouse.query import connect

_SQL = """
SELECT count(*) AS inferences,
  avg(thumbs_up / (thumbs_up + thumbs_down)) FILTER (WHERE thumbs_up + thumbs_down > 0) AS thumbs_up_rate,
  count(*) FILTER (WHERE thumbs_up + thumbs_down > 0) AS thumbs_n,
  avg(rating_mean) FILTER (WHERE ratings > 0) AS rating_mean,
  count(*) FILTER (WHERE ratings > 0) AS rating_n,
  avg((corrections > 0)::DOUBLE) AS correction_rate,
  avg((flags > 0)::DOUBLE) AS flag_rate
FROM interactions
WHERE model = $model AND ($mv IS NULL OR model_version = $mv) AND ($pv IS NULL OR prompt_version = $pv)
"""


@dataclass(frozen=True)
class OnlineEvidence:
    run_id: str
    model: str
    model_version: str | None
    """None: every version of the model (the run's target named none)."""
    prompt_version: str | None
    inferences: int
    thumbs_up_rate: float | None
    thumbs_n: int
    rating_mean: float | None
    rating_n: int
    correction_rate: float | None
    """Over all `inferences` (None when there are none), as is `flag_rate`."""
    flag_rate: float | None


def evidence(settings: Settings, target: RunTarget) -> OnlineEvidence:
    """The lake's feedback on `target`'s model and prompt version (a snapshot as of this call)."""
    con = connect(settings)
    try:
        row = con.execute(_SQL, {"model": target.model, "mv": target.model_version,
                                 "pv": target.prompt_version}).fetchone()
    finally:
        con.close()
    assert row is not None  # an aggregate always has a row
    n, up, up_n, rating, rating_n, corr, flag = row
    return OnlineEvidence(target.run_id, target.model, target.model_version, target.prompt_version, int(n),
                          up, int(up_n), rating, int(rating_n), corr, flag)


def for_runs(settings: Settings, *run_ids: str) -> tuple[OnlineEvidence, ...]:
    """The online evidence of each run's target, in the order given."""
    return tuple(evidence(settings, run_target(settings.lake_location, r)) for r in run_ids)
