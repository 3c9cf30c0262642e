"""L-BFGS on R independent chains whose objective is evaluated for all of them in one batched call.

DLG and iDLG restart L-BFGS from several starts. ``torch.optim.LBFGS`` runs one chain: every inner iteration
calls the closure for one candidate, so R restarts cost R sequential passes. ``BatchedLBFGS`` keeps one
L-BFGS state per chain (history, step, curvature pairs) and follows ``torch.optim.LBFGS``'s rule without a line
search operation for operation, but lets the chains wait for each other at every evaluation: the closure is
called with the chains that need a value, which the attack evaluates as one population. A chain that meets a
tolerance leaves the step; the others go on. Each chain follows the path it follows alone, up to the float
rounding of the batched evaluation (tested against ``torch.optim.LBFGS``).
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from typing import Any

import torch

from ggl.checks import positive_int, positive_number

ChainClosure = Callable[[list[int]], torch.Tensor]
"""Evaluates the listed chains at the current parameters: sets their rows of every ``.grad``, returns (k,) losses."""

_CURVATURE_FLOOR = 1e-10
"""A curvature pair enters the history only when y.s exceeds this (``torch.optim.LBFGS``'s constant)."""


class BatchedLBFGS(torch.optim.Optimizer):
    """R chains of ``torch.optim.LBFGS`` (``line_search_fn=None``) over the rows of stacked parameters.

    Args:
        params: tensors whose first dimension is the chain (R, ...); chain r owns row r of each.
        chains: R.
        lr, max_iter, history_size, tolerance_grad, tolerance_change: as in ``torch.optim.LBFGS``
            (``max_eval`` is its default, 5/4 of ``max_iter``).
    ``step(closure)`` runs one ``torch.optim.LBFGS.step`` on every chain and returns the (R,) losses of their
    first evaluation; ``last_step_iterations[r]`` is the number of iterations chain r made in it.
    """

    def __init__(
        self,
        params: Sequence[torch.Tensor],
        chains: int,
        *,
        lr: float = 1.0,
        max_iter: int = 20,
        history_size: int = 100,
        tolerance_grad: float = 1e-7,
        tolerance_change: float = 1e-9,
    ) -> None:
        params = list(params)
        positive_int("chains", chains)
        if not params or any(p.ndim == 0 or p.shape[0] != chains for p in params):
            shapes = [tuple(p.shape) for p in params]
            raise ValueError(
                f"BatchedLBFGS needs parameters whose first dimension is the {chains} chains, got {shapes}"
            )
        defaults = {
            "lr": positive_number("lr", lr),
            "max_iter": positive_int("max_iter", max_iter),
            "max_eval": max_iter * 5 // 4,
            "history_size": positive_int("history_size", history_size),
            "tolerance_grad": tolerance_grad,
            "tolerance_change": tolerance_change,
        }
        super().__init__(params, defaults)
        self.chains = chains
        self._stacked = params
        self.chain_states: list[dict[str, Any]] = [{"func_evals": 0, "n_iter": 0} for _ in range(chains)]
        self.last_step_iterations = [0] * chains

    def _flat_grad(self, chain: int) -> torch.Tensor:
        views = [p.new_zeros(p[chain].numel()) if p.grad is None else p.grad[chain].reshape(-1) for p in self._stacked]
        return torch.cat(views, 0)

    def _add_grad(self, chain: int, step_size: Any, update: torch.Tensor) -> None:
        offset = 0
        for p in self._stacked:
            row = p[chain]
            row.add_(update[offset : offset + row.numel()].view_as(row), alpha=step_size)
            offset += row.numel()

    @torch.no_grad()
    def step(self, closure: ChainClosure) -> torch.Tensor:  # type: ignore[override]
        """One L-BFGS step of every chain; ``closure(chains)`` evaluates the chains listed (see ``ChainClosure``)."""
        runs = [self._chain_step(chain) for chain in range(self.chains)]
        waiting = list(range(self.chains))
        for run in runs:
            next(run)
        first = torch.full((self.chains,), float("nan"))
        evaluated = [False] * self.chains
        while waiting:
            with torch.enable_grad():
                losses = closure(waiting)
            still = []
            for chain, loss in zip(waiting, losses.detach().reshape(-1).tolist()):
                if not evaluated[chain]:
                    first[chain], evaluated[chain] = loss, True
                try:
                    runs[chain].send(loss)
                    still.append(chain)
                except StopIteration:
                    pass
            waiting = still
        return first

    def _chain_step(self, chain: int) -> Generator[None, float, None]:
        """``torch.optim.LBFGS.step`` for one chain; every ``yield`` waits for the chain's loss (its grad is set)."""
        group = self.param_groups[0]
        lr, max_iter, max_eval = group["lr"], group["max_iter"], group["max_eval"]
        tolerance_grad, tolerance_change = group["tolerance_grad"], group["tolerance_change"]
        state = self.chain_states[chain]
        loss = yield
        current_evals = 1
        state["func_evals"] += 1
        flat_grad = self._flat_grad(chain)
        self.last_step_iterations[chain] = 0
        if flat_grad.abs().max() <= tolerance_grad:
            return
        d, t, prev_flat_grad = state.get("d"), state.get("t"), state.get("prev_flat_grad")
        n_iter = 0
        while n_iter < max_iter:
            n_iter += 1
            state["n_iter"] += 1
            if state["n_iter"] == 1:
                d = flat_grad.neg()
                state.update(old_dirs=[], old_stps=[], ro=[], H_diag=1)
            else:
                assert d is not None and prev_flat_grad is not None, "a later iteration has the previous one's state"
                d = self._direction(state, flat_grad, prev_flat_grad, d, t, group["history_size"])
            prev_flat_grad = flat_grad.clone(memory_format=torch.contiguous_format)
            prev_loss = loss
            t = min(1.0, 1.0 / flat_grad.abs().sum()) * lr if state["n_iter"] == 1 else lr
            if flat_grad.dot(d) > -tolerance_change:
                break
            self._add_grad(chain, t, d)
            opt_cond = False
            if n_iter != max_iter:
                loss = yield
                current_evals += 1
                state["func_evals"] += 1
                flat_grad = self._flat_grad(chain)
                opt_cond = bool(flat_grad.abs().max() <= tolerance_grad)
            if n_iter == max_iter or current_evals >= max_eval or opt_cond:
                break
            if d.mul(t).abs().max() <= tolerance_change or abs(loss - prev_loss) < tolerance_change:
                break
        state.update(d=d, t=t, prev_flat_grad=prev_flat_grad)
        self.last_step_iterations[chain] = n_iter

    @staticmethod
    def _direction(
        state: dict[str, Any],
        flat_grad: torch.Tensor,
        prev_flat_grad: torch.Tensor,
        d: torch.Tensor,
        t: Any,
        history_size: int,
    ) -> torch.Tensor:
        """The curvature pair of the last move into the history, then the two-loop recursion's direction."""
        old_dirs, old_stps, ro = state["old_dirs"], state["old_stps"], state["ro"]
        y = flat_grad.sub(prev_flat_grad)
        s = d.mul(t)
        ys = y.dot(s)
        if ys > _CURVATURE_FLOOR:
            if len(old_dirs) == history_size:
                old_dirs.pop(0)
                old_stps.pop(0)
                ro.pop(0)
            old_dirs.append(y)
            old_stps.append(s)
            ro.append(1.0 / ys)
            state["H_diag"] = ys / y.dot(y)
        q = flat_grad.neg()
        al: list[Any] = [None] * len(old_dirs)
        for i in range(len(old_dirs) - 1, -1, -1):
            al[i] = old_stps[i].dot(q) * ro[i]
            q.add_(old_dirs[i], alpha=-al[i])
        direction = r = torch.mul(q, state["H_diag"])
        for i in range(len(old_dirs)):
            be_i = old_dirs[i].dot(r) * ro[i]
            r.add_(old_stps[i], alpha=al[i] - be_i)
        return direction
