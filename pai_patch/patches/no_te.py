"""Run megatron-core's local (non-TE) layers wherever Transformer Engine does not import: CPU, or a GPU
with PyTorch alone.

megatron-core 0.16.1 assumes TE in a few places even when the local spec is asked for; each
patch in :data:`NO_TE_PATCHES` says which.  They are applied by :func:`apply` only when TE
cannot be used here (:func:`pai_patch.models.base.te_available`), so the TE path is untouched.
On CUDA :data:`FUSED_ADAM_PATCHES` also make megatron build torch's fused AdamW (:class:`FusedAdam`)
where TE or Apex would have given it their FusedAdam.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from pai_patch.patches.cpu import Patch

log = logging.getLogger(__name__)


def _local_norm() -> staticmethod:
    """``WrappedTorchNorm.__new__`` that also serves sequence parallelism and the run's dtype.

    megatron's version asserts SP off and ``persist_layer_norm`` off (the config turns the latter
    on for GPUs), and builds the weight in fp32 whatever ``params_dtype`` is: a bf16 model then
    holds fp32 norms, which fall off torch's fused RMSNorm and break the distributed optimizer's
    checkpoint (it indexes a mixed-dtype parameter group in the wrong order).  Under SP each TP
    rank normalises its own sequence shard, so the norm's weight gradients are partial; marking
    the parameters ``sequence_parallel`` makes megatron all-reduce them over TP, as it does for
    the fused CUDA norms.
    """

    def new(cls: type, config: Any, hidden_size: int, eps: float = 1e-5, *args: Any, **kwargs: Any) -> Any:
        if config.layernorm_zero_centered_gamma:
            raise ValueError("layernorm_zero_centered_gamma needs apex or Transformer Engine norms")
        norm_cls = {"LayerNorm": torch.nn.LayerNorm, "RMSNorm": torch.nn.RMSNorm}[config.normalization]
        norm = norm_cls(normalized_shape=hidden_size, eps=eps, dtype=config.params_dtype)
        for param in norm.parameters():
            param.sequence_parallel = config.sequence_parallel
        return norm

    return staticmethod(new)


def _set_present_optimizer_states() -> Any:
    """``DistributedOptimizer._set_main_param_and_optimizer_states`` that copies the states it is given.

    Without TE or Apex megatron falls back to ``torch.optim.AdamW``, whose per-parameter state
    also holds ``step``.  The loader restores ``step`` itself, from the saved parameter groups;
    the tensors it passes hold the main parameter and the moments, plus (dp_reshardable) a
    ``padding`` flag and a ``step`` that is this run's placeholder, not the saved one.  So only the
    parameter and the moments are copied: the original's copy of every state key raises KeyError
    (fully_reshardable) or resets every step counter to the placeholder (dp_reshardable).
    """
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    original = DistributedOptimizer._set_main_param_and_optimizer_states

    def set_states(self: Any, model_param: torch.nn.Parameter, tensors: dict[str, torch.Tensor]) -> None:
        if self.config.use_precision_aware_optimizer_no_fp8_or_ds_fp8:
            return original(self, model_param, tensors)
        group_index, group_order = self.model_param_group_index_map[model_param]
        main_param = self.optimizer.param_groups[group_index]["params"][group_order]
        destination = {"param": main_param, **self.optimizer.state[main_param]}
        for key, target in destination.items():
            if key == "step":
                continue
            if key not in tensors:
                raise KeyError(f"distributed optimizer checkpoint: no {key!r} state for a parameter of shape "
                               f"{tuple(model_param.shape)}")
            with torch.no_grad():  # the main parameter is a leaf that requires grad
                target.copy_(tensors[key])
        return None

    return set_states


def _load_with_own_steps() -> Any:
    """``DistributedOptimizer.load_state_dict`` that gives every parameter its own ``step`` tensor.

    For torch's AdamW the loader puts one ``step`` tensor into every parameter's state; AdamW
    increments each in place, so after a resume the shared counter runs N parameters times too
    fast and the bias correction is wrong: a resumed run silently diverges from an unbroken one.
    """
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    original = DistributedOptimizer.load_state_dict

    def load_state_dict(self: Any, state_dict: dict[str, Any]) -> None:
        original(self, state_dict)
        for state in self.optimizer.state.values():
            if torch.is_tensor(state.get("step")):
                state["step"] = state["step"].clone()

    return load_state_dict


class FusedAdam(torch.optim.Adam):
    """torch's Adam/AdamW with ``fused=True``, under the name and signature of Apex's ``FusedAdam``.

    Without TE or Apex megatron-core builds ``torch.optim.AdamW`` with its default (foreach)
    implementation, several kernels per parameter list; the fused one is a single multi-tensor
    kernel per dtype and device.  It subclasses ``Adam`` (not ``AdamW``) so megatron's checks for
    a torch Adam pass while ``HybridDeviceOptimizer`` (``optimizer.offload``), which tells its CPU
    part by ``isinstance(..., AdamW)``, still sees a GPU optimizer.  Fused keeps ``step`` as an
    fp32 tensor on the parameter's device, and ``load_state_dict`` takes the saved groups'
    ``fused``/``foreach`` flags: a checkpoint of a foreach run would silently turn it back into
    foreach with ``step`` on the host, so :meth:`__setstate__` restores both.
    """

    def __init__(self, params: Any, *, adam_w_mode: bool = True, **kwargs: Any) -> None:
        super().__init__(params, decoupled_weight_decay=adam_w_mode, fused=True, **kwargs)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            group.update(fused=True, foreach=None, decoupled_weight_decay=self.defaults["decoupled_weight_decay"])
            for param in group["params"]:
                step = self.state.get(param, {}).get("step")
                if torch.is_tensor(step):
                    self.state[param]["step"] = step.to(device=param.device, dtype=torch.float32)


#: megatron-core builds ``Adam`` with Apex's ``adam_w_mode`` keyword only when it believes a
#: fused optimizer is installed; applied on CUDA (on the CPU fused and foreach round differently,
#: and the golden losses are exact)
FUSED_ADAM_PATCHES: tuple[Patch, ...] = (
    Patch("megatron.core.optimizer", "Adam", FusedAdam,
          "without TE/Apex megatron builds torch AdamW's foreach implementation; the fused one is one kernel"),
    Patch("megatron.core.optimizer", "USING_PYTORCH_OPTIMIZER", False,
          "megatron then builds the `Adam` name (with adam_w_mode) instead of torch.optim.AdamW"),
)

NO_TE_PATCHES: tuple[Patch, ...] = (
    Patch("megatron.core.transformer.multi_latent_attention", "HAVE_TE", False,
          "without TE, TELinear is built on a MagicMock and MLA's `isinstance(proj, TELinear)` raises"),
    Patch("megatron.core.transformer.moe.moe_utils", "te_general_gemm", None,
          "without TE the name is never bound; the router's gating GEMM checks it against None"),
    Patch("megatron.core.transformer.torch_norm", "WrappedTorchNorm.__new__", _local_norm(),
          "the only norm without apex/TE refuses SP and persist_layer_norm and ignores params_dtype"),
    Patch("megatron.core.optimizer.distrib_optimizer", "DistributedOptimizer._set_main_param_and_optimizer_states",
          _set_present_optimizer_states(),
          "torch AdamW's `step` state is absent from the loaded tensors, so resuming the distributed optimizer raises"),
    Patch("megatron.core.optimizer.distrib_optimizer", "DistributedOptimizer.load_state_dict", _load_with_own_steps(),
          "the loader shares one torch AdamW `step` tensor among all parameters, so a resumed run's steps race ahead"),
)

_applied = False


def apply() -> bool:
    """Apply every no-TE patch once; returns True when TE cannot be used here."""
    global _applied
    from pai_patch.models.base import te_available

    if te_available():
        return False
    if not _applied:
        fused = torch.cuda.is_available()
        for patch in NO_TE_PATCHES + (FUSED_ADAM_PATCHES if fused else ()):
            patch.apply()
        log.info("no TE/Apex: megatron-core's Adam is torch's, %s", "fused=True (one multi-tensor kernel on CUDA)"
                 if fused else "foreach (on the CPU fused rounds differently, and the golden losses are exact)")
        _applied = True
    return True
