"""Facts of the kernel families that clients need too, kept free of torch so that a light client
(the CLI's defaults, ``attnscope.service.limits``) can read them without loading it."""

from __future__ import annotations

#: The pooled size when none is asked for (Trace.pooled, the service's Limits.default_pooled_size).
DEFAULT_POOLED_SIZE = 256

#: name -> (what it measures, which end marks a notable head: "high" or "low"). The service reports
#: these in ServerInfo.head_stats; the viewer and the CLI read them from there or from here.
HEAD_STATS = {
    "entropy": ("attention entropy of a query row, nats (low: a focused head)", "low"),
    "previous_token": ("mass on the previous token, P[q, q-1]", "high"),
    "self": ("mass on the query's own position, P[q, q]", "high"),
    "first_token": ("mass on the first token (often a sink: [CLS], BOS), P[q, 0]", "high"),
    "mean_distance": ("mean |q - k| under the row's attention, tokens", "high"),
    "duplicate_token": (
        "mass on other occurrences of the query's token, over rows where the token occurred before",
        "high",
    ),
    "induction": (
        "mass on the token after an earlier occurrence of the query's token (induction), over rows "
        "that have one",
        "high",
    ),
}
HEAD_STAT_NAMES = tuple(HEAD_STATS)
