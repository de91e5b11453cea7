"""Plain markdown tables (:mod:`exp3rt.tables`) and the baselines table (:mod:`exp3rt.baselines.report`),
under the names the evaluation used first."""

from exp3rt.baselines.report import baselines_report  # noqa: F401
from exp3rt.tables import fmt, markdown_table  # noqa: F401
