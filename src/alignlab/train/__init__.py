"""alignlab.train: the shared training loop (``loop.train_loop``) and the stages
``sft.run_sft``, ``reward.run_rm`` and ``dpo.run_dpo``."""
