"""AdamW with float32 master weights for a model held in a 16-bit dtype (``trainer.precision=bf16-true``).

A bf16 weight keeps 8 bits of mantissa: an update smaller than about 1/256 of the weight rounds away. At
the learning rates fine-tuning uses (1e-4 on weights of magnitude ~0.05), most of a plain AdamW's updates
on bf16 weights are lost and training stalls. This optimizer keeps a float32 copy of every trainable
weight with its moments, applies AdamW there, and writes the rounded result back into the bf16 weight:
the model runs at bf16 speed and learns as in float32 (mixed precision's master weights, without
autocast's casts in every forward). DeepSpeed keeps its own master weights; it is not used there.

The update is torch's AdamW (decoupled weight decay, bias-corrected moments); on float32 weights it
matches ``torch.optim.AdamW`` step for step. Its state (master weights, moments, step) is saved with the
checkpoint, so a resumed run continues exactly: ``load_state_dict`` keeps it in float32, where torch's
would cast every floating-point state tensor to its parameter's bf16 (losing the master weights' extra
bits, and failing at the next step on mixed dtypes).
"""

from __future__ import annotations

import torch

_FLOAT32_STATE = ("master", "exp_avg", "exp_avg_sq")


class MasterWeightAdamW(torch.optim.Optimizer):
    def __init__(
        self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0
    ):
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay})

    def load_state_dict(self, state_dict) -> None:
        saved = state_dict["state"]
        super().load_state_dict(state_dict)  # casts floating state to each parameter's dtype
        ids = [i for g in state_dict["param_groups"] for i in g["params"]]
        params = [p for g in self.param_groups for p in g["params"]]
        for i, p in zip(ids, params, strict=True):
            for name in _FLOAT32_STATE:
                if i in saved and name in saved[i]:
                    self.state[p][name] = saved[i][name].to(device=p.device, dtype=torch.float32, copy=True)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            lr, eps, decay = float(group["lr"]), float(group["eps"]), float(group["weight_decay"])
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["master"] = p.detach().to(torch.float32, copy=True)
                    state["exp_avg"] = torch.zeros_like(state["master"])
                    state["exp_avg_sq"] = torch.zeros_like(state["master"])
                state["step"] += 1
                master, avg, avg_sq = state["master"], state["exp_avg"], state["exp_avg_sq"]
                grad = p.grad.to(torch.float32)
                if decay:
                    master.mul_(1.0 - lr * decay)
                avg.lerp_(grad, 1.0 - beta1)
                avg_sq.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
                bias1 = 1.0 - beta1 ** state["step"]
                bias2 = 1.0 - beta2 ** state["step"]
                denom = (avg_sq / bias2).sqrt_().add_(eps)
                master.addcdiv_(avg, denom, value=-lr / bias1)
                p.copy_(master)
        return loss
