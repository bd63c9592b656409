"""The script the online-RL distributed test launches: ``alignlab online`` (the real CLI) in this
process, alone or under ``accelerate launch``, with a spy on the first optimiser step.

Run as ``python rl_dist_worker.py CONFIG.yaml GRADS.safetensors``: the policy's gradients at the
first optimiser step, after DDP's all-reduce (so the same on every process), are written by the
main process to GRADS (parameter names without DDP's ``module.`` prefix; FSDP2's sharded
gradients gathered whole); the run itself writes its metrics and model to the config's ``out``.
"""

from __future__ import annotations

import sys

from safetensors.torch import save_file

from alignlab.models.sharding import whole_tensor
from alignlab.rl import trainer


def first_step_spy(path: str, real):
    """A stand-in for ``trainer._optimiser_step`` that saves the first step's synchronised policy
    gradients to ``path`` (main process; FSDP2 shards are gathered first, on every process), then
    steps as ``real`` does."""
    seen = []

    def spy(acc, learner, sums):
        if not seen:
            grads = {name.removeprefix("module."): whole_tensor(p.grad.detach()).clone().contiguous()
                     for name, p in learner.policy.named_parameters() if p.grad is not None}
            if acc.is_main_process:
                save_file(grads, path)
        seen.append(True)
        return real(acc, learner, sums)

    return spy


if __name__ == "__main__":
    config, grads = sys.argv[1:3]
    trainer._optimiser_step = first_step_spy(grads, trainer._optimiser_step)
    from alignlab.cli import app

    app(["online", "--config", config], prog_name="alignlab", standalone_mode=False)
