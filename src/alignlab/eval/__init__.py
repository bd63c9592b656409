"""alignlab.eval: gold/proxy reward, rates, KL and win rate with standard errors, and reports.

- :mod:`.stats`    ``Stat(mean, se, n)``, ``mean_se``, ``rate``, ``paired_difference``, ``z_score``
- :mod:`.metrics`  gold metrics from the gym's ``GoldResult``s; completion lengths
- :mod:`.kl`       Monte-Carlo KL(policy ‖ reference) from the policy's samples
- :mod:`.winrate`  reward-model judge, win rate against the reference, proxy reward
- :mod:`.run`      ``run_eval`` (the stage) and ``evaluate_policy``/``EvalContext`` (loaded models)
- :mod:`.report`   ``write_report``, ``print_table``, ``compare``, ``paired_compare``, ``run_report``

Only the torch-free parts are imported here; import the others from their modules.
"""

from alignlab.eval.report import compare, paired_compare, print_table, write_report
from alignlab.eval.stats import Stat, mean_se, paired_difference, rate, z_score

__all__ = ["Stat", "compare", "mean_se", "paired_compare", "paired_difference", "print_table",
           "rate", "write_report", "z_score"]
