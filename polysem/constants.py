"""The method's constants (docs/method.md). The SQL macros in `sql/` use the same defaults;
tests/test_sql_screening.py checks that they agree."""

TAU = 0.03  # Ineq. 2: channel relevant for an image when A_c >= TAU * sum of positive attributions
P = 0.75  # Ineq. 2: channel relevant for a class when relevant for at least P of its images
GAMMA = 0.5  # Theorem 3.1: a channel is a polysemantic candidate when the ARV cosine < GAMMA
RHO_GRID = tuple(round(0.05 * k, 2) for k in range(1, 21))  # Eq. 6: 0.05, 0.10, ..., 1.00
SCREEN_SPLIT = "train"
EVAL_SPLIT = "val"
DEFAULT_STORE = "polysem-store"  # the store folder when neither --store nor POLYSEM_STORE names one
