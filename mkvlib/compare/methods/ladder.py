"""``ladder``: the precision ladder on the Matryoshka bases (:mod:`mkvlib.ladder`), searched over bytes.

Each (layer, KV head, K or V) stores consecutive segments of its trained basis at the widths of a searched layout
in the real :class:`mkvlib.ladder.LadderCache`. Settings are budgets in bits per stored element, each the prefix
of the trajectory (default ``data/results/ladder_trajectory.json``) that first reaches it; fixed bytes are the
truncated bases and value means, as for ``matryoshka``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ...core.geometry import KVGeometry
from ...core.env import shipped_data_dir
from ..base import ByteReport, KVMethod, Setting, register
from ..layers import cache_runner, check_context, element_size
from .projection import projection_bytes

SHIPPED_TRAJECTORY = "results/ladder_trajectory.json"


@register
@dataclass(frozen=True)
class LadderMethod(KVMethod):
    """Options: ``projections`` ('trained', 'pca', a path or Projections: those the trajectory was searched
    for), ``trajectory`` (None: the shipped one), ``bits`` (budgets in bits per element, most first)."""
    projections: object = "trained"
    trajectory: object = None
    bits: tuple = (4.0, 2.0, 1.0)
    _memo: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    name, axis = "ladder", "composed"

    def __post_init__(self):
        bits = (self.bits,) if isinstance(self.bits, (int, float)) else tuple(self.bits)
        if not bits or any(isinstance(b, bool) or not isinstance(b, (int, float)) or b <= 0 for b in bits):
            raise ValueError(f"bits are budgets in bits per element (positive numbers such as 4, 2, 1), not "
                             f"{self.bits!r}")
        object.__setattr__(self, "bits", tuple(sorted((float(b) for b in bits), reverse=True)))

    def loaded(self, model):
        """(projections, trajectory), checked to belong together and to ``model``."""
        key = (id(model), getattr(model, "mkv_name", None))
        if key not in self._memo:
            from ...ladder import LadderTrajectory
            from ...core.projections import resolve_projections

            proj = resolve_projections(self.projections, model)
            traj = self.trajectory
            if not isinstance(traj, LadderTrajectory):
                traj = LadderTrajectory.load(traj if traj is not None else shipped_data_dir() / SHIPPED_TRAJECTORY)
            if traj.fingerprint != proj.fingerprint():
                raise ValueError(f"the ladder trajectory was searched for projections {traj.fingerprint}, not "
                                 f"these ({proj.fingerprint()})")
            self._memo[key] = (proj, traj)
        return self._memo[key]

    def unsupported(self, model) -> str | None:
        try:
            self.loaded(model)
        except (OSError, ValueError) as err:
            return f"ladder needs its projections and ladder trajectory for this model: {err}"
        return None

    def settings(self, model) -> list[Setting]:
        return [Setting(self.name, f"{b:g} bits/element", (("bits", b),)) for b in self.bits]

    def layout(self, model, setting: Setting):
        return self.loaded(model)[1].at(float(setting.get("bits")))

    def bytes(self, model, setting: Setting, context: int) -> ByteReport:
        check_context(context)
        lad = self.layout(model, setting)
        per_token = lad.token_bytes()
        kept = (lad.feature_bits() > 0).sum(-1)
        fixed = projection_bytes(kept, KVGeometry.of(model).head_dim, element_size(model))
        return ByteReport.of(model, per_token, fixed, context, bits_per_element=lad.bits_per_element())

    def runner(self, model, setting: Setting):
        from ...ladder import LadderCache

        proj, lad = self.loaded(model)[0], self.layout(model, setting)
        return cache_runner(model, lambda batch, tokens: LadderCache(model, proj, lad))
