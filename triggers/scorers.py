"""Step scorers: each maps a step to ``score`` in [0, 1], an estimate that the step is correct.

``logprob`` is free: it uses only the signals read while decoding. On the bench pair the lowest
top-1 probability of any token and the share of unsure tokens separate right from wrong solutions
far better than mean entropy (shared/BASELINES.md: AUROC 0.75 for the minimum, 0.66 for the share,
0.61 for mean entropy), so the score is built from those two:

    score = min_top1 ** 0.25 * (1 - low_top1_share)

The fourth root spreads the minimum, which is often tiny, across [0, 1]; a step whose every token
was sure (min_top1 -> 1, no unsure tokens) scores near 1, and one with a coin-flip token and many
hesitant ones scores low.
"""

from __future__ import annotations

from edge_agent.values import Signals


def logprob_score(signals: Signals) -> float:
    if signals.n_tokens == 0:
        return 1.0
    score = (max(signals.min_top1, 0.0) ** 0.25) * (1.0 - min(max(signals.low_top1_share, 0.0), 1.0))
    return round(min(max(score, 0.0), 1.0), 6)


SCORERS = {"logprob": logprob_score}
