"""alignlab.rl: online RL from feedback (issue 4): advantage estimators, KL control, policy and value
objectives as pure functions, and scorers. The rollout → score → advantage → update trainer builds on
these."""
