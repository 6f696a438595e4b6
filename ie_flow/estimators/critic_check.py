"""The critic-sufficiency check (docs/METHOD.md section 5): a second opinion from a small MLP
critic on cells where the default linear critic finds little.

The copula transform makes per-coordinate distortions harmless, but dependence that lives in
joint nonlinear features escapes a linear critic entirely: an identity-dispersion Student-t
(dependence only through the shared scale ||x|| with ||y||) reads 0.00 bits of 0.24-0.65, a
spiral diffeomorphism of a Gaussian 0.00 of 1.47.  Where the linear critic finds nothing
(its 95% interval reaches 0) the cell is re-estimated on the same split by an MLP critic
(``MLP_CRITIC``).  When the MLP's interval lies wholly above the linear one, the linear critic
demonstrably misses dependence: the MLP's value is reported and the cell is flagged "not
resolvable by the linear critic" (still a held-out lower bound, but from a critic family that
was just shown to be insufficient).  Otherwise the linear value stands.

"Nothing found" is the one linear reading that says nothing about nonlinear dependence; the
cells of a language-model profile are far from 0 bits, so the check costs them nothing (a first
version that checked every cell below 1 bit re-estimated the ~1-bit cells of small-K corpora)."""
from __future__ import annotations

import dataclasses

from .base import MIEstimate

MLP_CRITIC = {"hidden": 128, "layers": 1}


def needs_check(est: MIEstimate) -> bool:
    """The linear critic found nothing: its interval reaches 0 bits."""
    return est.valid and not est.diverged and est.ci_low <= 0.0


def second_opinion(linear: MIEstimate, mlp: MIEstimate) -> MIEstimate:
    """The cell after the MLP's second opinion (see the module docstring)."""
    diag = {**linear.diagnostics, "linear_bits": linear.bits, "mlp_bits": mlp.bits}
    said = (f"linear critic {linear.bits:.2f} bits [{linear.ci_low:.2f}, {linear.ci_high:.2f}], "
            f"MLP critic (hidden=128, layers=1) {mlp.bits:.2f} bits [{mlp.ci_low:.2f}, {mlp.ci_high:.2f}]")
    if mlp.valid and mlp.ci_low > linear.ci_high:
        reason = f"not resolvable by the linear critic: {said}; the value is the MLP's, a lower bound"
        settings = {**mlp.settings, "critic_check": reason, "not_resolvable": reason}
        return dataclasses.replace(mlp, settings=settings, diagnostics={**mlp.diagnostics, **diag},
                                   seconds=linear.seconds + mlp.seconds)
    settings = {**linear.settings, "critic_check": f"the MLP critic does not find more: {said}"}
    return dataclasses.replace(linear, settings=settings, diagnostics=diag, seconds=linear.seconds + mlp.seconds)
