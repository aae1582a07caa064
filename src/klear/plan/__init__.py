"""``klear plan``: memory per GPU of a recipe's learner and rollout engines, before booking GPUs.

:mod:`shapes` reads the model's dimensions, :mod:`memory` holds the formulas, :mod:`planner`
applies them to a recipe, :mod:`report` prints the table, :mod:`validate` measures the learner
formula against tiny models on CPU.
"""
