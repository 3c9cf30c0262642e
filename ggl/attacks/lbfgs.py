"""L-BFGS on R independent chains whose objective is evaluated for all of them in one batched call.

DLG and iDLG restart L-BFGS from several starts. ``torch.optim.LBFGS`` runs one chain: every inner iteration
calls the closure for one candidate, so R restarts cost R sequential passes. ``BatchedLBFGS`` keeps one
L-BFGS state per chain (history, step, curvature pairs) and follows ``torch.optim.LBFGS``'s rule without a line
search (its tolerances, step sizes and history), but lets the chains wait for each other at every evaluation:
the closure is called with the chains that need a value, which the attack evaluates as one population. A chain
that meets a tolerance leaves the step; the others go on.

The search direction comes from the compact representation of the L-BFGS inverse Hessian (Byrd, Nocedal,
Schnabel 1994), not from ``torch.optim.LBFGS``'s two-loop recursion: the same matrix, so the same direction up to
float rounding, in about ten tensor operations instead of four per stored pair and loop. With the default 100
pairs the two-loop recursion spends about 5 ms an iteration on Python and kernel-launch overhead, more than a
LeNet evaluation costs; the compact form keeps two (m, m) products of the pairs (in float64) up to date, one row
per accepted pair. Each chain follows the path ``torch.optim.LBFGS`` follows alone up to that rounding (tested).
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
                state.update(_empty_history(flat_grad))
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
        """The curvature pair of the last move into the history, then the direction -H g."""
        y = flat_grad.sub(prev_flat_grad)
        s = d.mul(t)
        ys = y.dot(s)
        if ys > _CURVATURE_FLOOR:
            _remember(state, s, y, history_size)
            state["H_diag"] = float(ys / y.dot(y))
        return _inverse_hessian_times(state, flat_grad.neg())


def _empty_history(flat_grad: torch.Tensor) -> dict[str, Any]:
    """No curvature pairs yet: S and Y (k, n) hold the pairs, oldest first; R and YY their (k, k) products."""
    empty = flat_grad.new_empty(0, flat_grad.numel())
    products = flat_grad.new_empty(0, 0, dtype=torch.float64)
    return {"S": empty, "Y": empty, "R": products, "YY": products, "H_diag": 1.0}


def _remember(state: dict[str, Any], s: torch.Tensor, y: torch.Tensor, history_size: int) -> None:
    """Append the pair (s, y), dropping the oldest past ``history_size``; extend R (s_i.y_j for i <= j, upper
    triangular) and YY (y_i.y_j) by the new pair's column, one matrix-vector product each."""
    keep = 1 if state["S"].shape[0] == history_size else 0
    S = torch.cat([state["S"][keep:], s[None]])
    Y = torch.cat([state["Y"][keep:], y[None]])
    R = torch.nn.functional.pad(state["R"][keep:, keep:], (0, 1, 0, 1))
    YY = torch.nn.functional.pad(state["YY"][keep:, keep:], (0, 1, 0, 1))
    R[:, -1] = (S @ y).double()
    YY[:, -1] = YY[-1, :] = (Y @ y).double()
    state.update(S=S, Y=Y, R=R, YY=YY)


def _inverse_hessian_times(state: dict[str, Any], q: torch.Tensor) -> torch.Tensor:
    """H q for the L-BFGS inverse Hessian H of the stored pairs, H_0 = H_diag I, in compact form:
    H q = g q + S' p - g Y' u with g = H_diag, u = R^-1 S q and p = R^-T ((D + g YY) u - g Y q), D = diag(R)
    (Byrd, Nocedal, Schnabel 1994; the two-loop recursion's matrix). The (k, k) algebra is float64."""
    gamma, S, Y, R = state["H_diag"], state["S"], state["Y"], state["R"]
    if S.shape[0] == 0:
        return q.mul(gamma)
    u = torch.linalg.solve_triangular(R, (S @ q).double()[:, None], upper=True)
    w = R.diagonal()[:, None] * u + gamma * (state["YY"] @ u) - gamma * (Y @ q).double()[:, None]
    p = torch.linalg.solve_triangular(R.T, w, upper=False)
    direction = torch.addmv(q.mul(gamma), S.T, p.squeeze(1).to(q.dtype))
    return direction.addmv_(Y.T, u.squeeze(1).to(q.dtype), alpha=-gamma)
