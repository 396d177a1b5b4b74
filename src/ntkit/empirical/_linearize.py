"""``linearize``: the first-order Taylor expansion of a model in its parameters, as a module."""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.func import functional_call, jvp

from ._problem import check_model, composite_kernels, select_parameters


class Linearized(nn.Module):
    """A model linearized in its parameters around their values :math:`\\theta_0` at creation:

    .. math:: f_{lin}(x; \\theta) = f(x; \\theta_0) + J(x; \\theta_0)\\,(\\theta - \\theta_0),
              \\qquad J = \\partial f / \\partial \\theta

    (Lee et al. 2019, eq. 5), computed with one forward-mode Jacobian-vector product
    (``torch.func.jvp``): about the cost of two or three forward passes, and no Jacobian in
    memory. Gradient descent on ``f_lin`` follows the closed-form dynamics of the empirical NTK
    :math:`\\Theta = J J^\\top` exactly (Lee et al. 2019, eqs. 8-11), which
    ``ntkit.predict.gradient_descent_mse`` gives without training.

    Build with :func:`ntkit.linearize`. The trainable parameters :math:`\\theta` are ``params``
    (initialised to :math:`\\theta_0`); ``model`` is a frozen copy of the original at
    :math:`\\theta_0`, whose mode (``train()``/``eval()``) and buffers the expansion uses (in
    training mode, BatchNorm normalizes with each batch's statistics, and the running statistics
    stay those of :math:`\\theta_0`).

    Attributes
    ----------
    model : nn.Module
        The frozen copy at :math:`\\theta_0`; its parameters have ``requires_grad=False``.
    params : nn.ParameterList
        The trainable :math:`\\theta`, in the order of ``names``.
    names : list of str
        The original model's names of the expanded parameters; the others stay fixed.
    """

    def __init__(self, model: nn.Module, params=None):
        super().__init__()
        check_model(model)
        names = list(select_parameters(model, params))
        self.model = copy.deepcopy(model)
        self.model.requires_grad_(False)
        self.names = names
        self.params = nn.ParameterList(
            [nn.Parameter(self.model.get_parameter(name).detach().clone()) for name in names]
        )

    def theta0(self) -> dict[str, torch.Tensor]:
        """The expansion point :math:`\\theta_0`, by name."""
        return {name: self.model.get_parameter(name) for name in self.names}

    def delta(self) -> dict[str, torch.Tensor]:
        """:math:`\\theta - \\theta_0`, by name (differentiable with respect to ``params``)."""
        theta0 = self.theta0()
        return {name: p - theta0[name] for name, p in zip(self.names, self.params)}

    def _call(self, params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        # fresh copies of the buffers: a module that updates them (BatchNorm in training mode,
        # which normalizes with the batch's statistics) must not mutate tensors captured by jvp
        buffers = {name: b.clone() for name, b in self.model.named_buffers()}
        with composite_kernels():
            return functional_call(self.model, (params, buffers), (x,))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, change = jvp(lambda p: self._call(p, x), (self.theta0(),), (self.delta(),))
        return out + change


def linearize(model: nn.Module, params=None) -> Linearized:
    """The model linearized in its parameters: :math:`f(x;\\theta_0) + J(x;\\theta_0)(\\theta-\\theta_0)`.

    Parameters
    ----------
    model : torch.nn.Module
        Any materialized module; it is copied, so later changes to it do not affect the result.
    params : optional
        The parameters to expand in (a submodule, names, Parameters; see
        :func:`ntkit.empirical_ntk`); None means every parameter with ``requires_grad``.

    Returns
    -------
    Linearized
        A ``torch.nn.Module`` equal to ``model`` at :math:`\\theta_0`, linear in its trainable
        ``parameters()``, which any torch optimizer can train. Each call costs one forward-mode
        JVP (about 2-3 forward passes).

    References
    ----------
    Lee, Xiao, Schoenholz, Bahri, Novak, Sohl-Dickstein, Pennington 2019, "Wide neural networks
    of any depth evolve as linear models under gradient descent", eq. 5.

    Examples
    --------
    >>> lin = ntkit.linearize(model)
    >>> optimizer = torch.optim.SGD(lin.parameters(), lr=0.1)
    """
    return Linearized(model, params)
