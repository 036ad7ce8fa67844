"""marionet.evaluate."""

# criteria and report import numpy/scipy/matplotlib/pyarrow only inside their functions
from .criteria import (C1_LATENCY, C1_THROUGHPUT, Comparison, c1, c2, c3, compare,  # noqa: E402,F401
                       describe, jaccard)
from .report import ExperimentSpec, ReportFiles, write_report  # noqa: E402,F401
