"""LoRA on activations: y = f(x) + s · (α/r) · B(A(x)), as forward hooks on a ModelPatcher clone.

LoRA (Hu et al., 2021, eq. 3) adds ΔW = (α/r)·B·A to a frozen weight W. Applying it to the layer's
output instead of its weight is the same function for Linear and (groups=1) Conv2d layers:
    Linear: W'x = Wx + (α/r)·B(Ax)
    Conv2d: conv(x, W') = conv(x, W) + (α/r)·conv1x1(conv(x, A), B)   with A of the layer's kernel size
The hooks are installed through the clone's injections (`ModelPatcher.set_injections`), so they exist
only while that clone is the loaded one and are removed when ComfyUI unloads it: the shared model is
never modified. Strength s is a float (training, inference) or a per-sample tensor (batched guidance);
s = 0 is a bit-exact frozen base forward.

Models that update a tensor in place after a layer has read it (Flux's DoubleStreamBlock and SingleStreamBlock
normalise their input, then `img += …` / `x += …` into it) break autograd once a LoRA upstream makes that tensor
require grad: the norm saved it for backward and the add bumped its version ("modified by an inplace operation
… output 0 of Add"). While a graph is being recorded, `install` hands such modules (lora/targets.py names them
per family) a copy of their input, so what they saved is never written to; with no graph (sampling) they get the
tensor itself. The copy costs what an out-of-place residual add would keep anyway.

Parameters use ComfyUI's native LoRA key names, so the state dict is what LoraLoader, the LORA_MODEL
socket and `comfy.lora.load_lora` read: `diffusion_model.<module>.lora_down.weight` (A, [r, in, kh, kw]),
`.lora_up.weight` (B, [out, r, 1, 1] or [out, r]) and `.alpha`.
"""

import math

import torch
import torch.nn.functional as F

INJECTION_KEY = "driftless_lora"
KEY_PREFIX = "diffusion_model."


class LoraLayer(torch.nn.Module):
    """A and B for one layer, and how to apply them to that layer's input."""

    def __init__(self, layer: torch.nn.Module, rank: int, alpha: float):
        super().__init__()
        if isinstance(layer, torch.nn.Conv2d):
            self.kind = "conv"
            self.conv_args = {"stride": layer.stride, "padding": layer.padding, "dilation": layer.dilation}
            in_features, out_features = layer.in_channels, layer.out_channels
            down_shape = (rank, in_features, *layer.kernel_size)
            up_shape = (out_features, rank, 1, 1)
        else:
            self.kind = "linear"
            in_features, out_features = layer.in_features, layer.out_features
            down_shape, up_shape = (rank, in_features), (out_features, rank)
        self.rank = rank
        self.down = torch.nn.Parameter(torch.zeros(down_shape, dtype=torch.float32))
        self.up = torch.nn.Parameter(torch.zeros(up_shape, dtype=torch.float32))
        self.register_buffer("alpha", torch.tensor(float(alpha)))

    def reset(self, generator: torch.Generator) -> None:
        """peft's default: A ~ Kaiming-uniform(a=√5), B = 0, so training starts from the base model."""
        fan_in = math.prod(self.down.shape[1:])
        bound = 1.0 / math.sqrt(fan_in)  # kaiming_uniform_ with a=√5 gives exactly this bound
        with torch.no_grad():
            self.down.copy_(torch.rand(self.down.shape, generator=generator) * 2 * bound - bound)
            self.up.zero_()

    @property
    def scale(self) -> torch.Tensor:
        return self.alpha / self.rank

    def apply(self, x: torch.Tensor, output: torch.Tensor, strength) -> torch.Tensor:
        """output + strength·(α/r)·B(A(x)) for the layer input x.

        A float strength and α/r fold into the up-projection's scalar, fused with the residual add (addmm /
        baddbmm) when dtypes agree: no kernel of its own. A per-sample strength tensor [B] scales the rank-r
        hidden activation (r channels instead of the layer's width).
        """
        if isinstance(strength, torch.Tensor):
            return self._add_up(output, self._scaled_hidden(x, strength))
        return self._add_up(output, self._hidden(x), float(strength) * self.scale_value())

    def apply_per_sample(self, x: torch.Tensor, output: torch.Tensor, strength: torch.Tensor,
                         plan: "SamplePlan | None" = None) -> torch.Tensor:
        """`apply` with a strength per sample, computed only on the samples whose strength is not 0.

        When those form one contiguous run of the batch and no graph is being recorded (sampling), the
        up-projection is accumulated in place into that slice of the output: the other samples cost nothing.
        A run at one common strength folds that strength and α/r into the accumulation's scalar.
        """
        plan = plan or SamplePlan.of(strength)
        if plan.rows is None:
            return output
        start, end = plan.rows
        if (start, end) == (0, output.shape[0]) or torch.is_grad_enabled() or not output.is_contiguous():
            return self.apply(x, output, strength)
        if plan.uniform is None:
            hidden, factor = self._scaled_hidden(x[start:end], strength[start:end]), 1.0
        else:
            hidden, factor = self._hidden(x[start:end]), plan.uniform * self.scale_value()
        self._add_up(output[start:end], hidden, factor, in_place=True)
        return output

    def _add_up(self, output: torch.Tensor, hidden: torch.Tensor, factor: float = 1.0, in_place: bool = False):
        """output + factor·B(hidden), fused into addmm / baddbmm when dtypes agree (a plain add in the output's
        dtype under autocast or a half-precision model); written into `output` (contiguous) when in_place."""
        up = self.up.to(hidden.device, hidden.dtype)
        if output.dtype != hidden.dtype:
            delta = (F.conv2d(hidden, up) if self.kind == "conv" else F.linear(hidden, up)).to(output.dtype)
            return output.add_(delta, alpha=factor) if in_place else output.add(delta, alpha=factor)
        if self.kind == "conv":
            b, c, h, w = output.shape
            flat = output.reshape(b, c, h * w)
            fused = (flat.baddbmm_ if in_place else flat.baddbmm)(up.view(c, -1).expand(b, -1, -1),
                                                                   hidden.reshape(b, -1, h * w), alpha=factor)
        else:
            flat = output.reshape(-1, output.shape[-1])
            fused = (flat.addmm_ if in_place else flat.addmm)(hidden.reshape(-1, hidden.shape[-1]), up.t(), alpha=factor)
        return output if in_place else fused.view(output.shape)

    def scale_value(self) -> float:
        """α/r as a Python number, read from the buffer again only after it changes (no device sync per call).

        A buffer made under torch.inference_mode has no version counter; it is keyed by its storage, and
        `load_lora_state_dict` (the pack's one in-place writer of α) drops the cached value."""
        try:
            key = (self.alpha.data_ptr(), self.alpha._version)
        except RuntimeError:
            key = (self.alpha.data_ptr(), None)
        cache = getattr(self, "_scale_cache", None)
        if cache is None or cache[0] != key:
            cache = self._scale_cache = (key, float(self.alpha) / self.rank)
        return cache[1]

    def _hidden(self, x: torch.Tensor) -> torch.Tensor:
        """A(x): the rank-r activation."""
        down = self.down.to(x.device)
        if not torch.is_autocast_enabled(x.device.type):
            x = x.to(down.dtype)
        return F.conv2d(x, down, **self.conv_args) if self.kind == "conv" else F.linear(x, down)

    def _scaled_hidden(self, x: torch.Tensor, strength: torch.Tensor) -> torch.Tensor:
        """strength·(α/r)·A(x) with a strength per sample [B]."""
        if strength.shape[0] != x.shape[0]:
            raise RuntimeError(f"per-sample LoRA strength has {strength.shape[0]} entries for a batch of {x.shape[0]}")
        hidden = self._hidden(x)
        per_sample = strength.to(hidden.device, hidden.dtype).reshape(-1, *([1] * (hidden.ndim - 1)))
        return hidden * (per_sample * self.scale_value())


class SamplePlan:
    """Which samples of a batch a per-sample strength touches: the (start, end) run spanning its non-zero
    entries (None when all are 0), and their common value when they share one (else None)."""

    def __init__(self, rows: tuple[int, int] | None, uniform: float | None):
        self.rows, self.uniform = rows, uniform

    @classmethod
    def of(cls, strength: torch.Tensor) -> "SamplePlan":
        values = strength.detach().cpu()
        nonzero = torch.nonzero(values).flatten().tolist()
        if not nonzero:
            return cls(None, None)
        start, end = nonzero[0], nonzero[-1] + 1
        run = values[start:end]
        return cls((start, end), float(run[0]) if bool((run == run[0]).all()) else None)


class LoraAdapter(torch.nn.Module):
    """All LoRA layers of one model, with a strength and the hooks that apply them."""

    def __init__(self, targets: dict[str, torch.nn.Module], rank: int | dict[str, int], alpha: float):
        """One LoraLayer per target; `rank` is one rank for all, or a rank per target name (a LoRA made
        elsewhere often has one rank for linear layers and another for convolutions)."""
        super().__init__()
        self.names = list(targets)
        ranks = rank if isinstance(rank, dict) else dict.fromkeys(self.names, rank)
        self.layers = torch.nn.ModuleList(LoraLayer(m, ranks[n], alpha) for n, m in targets.items())
        self.rank = max(ranks.values()) if ranks else 0  # the rank of every layer unless `ranks` says otherwise
        self.ranks = ranks
        self.alpha_value = float(alpha)
        self.strength: float | torch.Tensor = 1.0
        self._handles: list = []
        self._guarded: list = []  # modules given the in-place guard by `install`

    # ---- construction and state -------------------------------------------------------------
    @classmethod
    def for_model(cls, diffusion_model, preset: str, rank: int, alpha: float, generator: torch.Generator):
        from .targets import select_targets

        targets = select_targets(diffusion_model, preset)
        check_rank(targets, rank)
        adapter = cls(targets, rank, alpha)
        for layer in adapter.layers:
            layer.reset(generator)
        return adapter

    @classmethod
    def from_state_dict(cls, diffusion_model, state: dict[str, torch.Tensor]):
        """Rebuild an adapter from ComfyUI-native LoRA keys (what `lora_state_dict` writes)."""
        keys = sorted(k.rsplit(".lora_down.weight", 1)[0] for k in state if k.endswith(".lora_down.weight"))
        if not keys:
            raise ValueError("no LoRA layers found (expected ComfyUI-native 'diffusion_model.….lora_down.weight' keys; "
                             f"first keys: {sorted(state)[:3]})")
        modules = dict(diffusion_model.named_modules())
        names = [k[len(KEY_PREFIX):] for k in keys if k.startswith(KEY_PREFIX) and k[len(KEY_PREFIX):] in modules]
        if len(names) != len(keys):
            missing = next(k for k in keys if k[len(KEY_PREFIX):] not in names)
            raise ValueError(f"does not fit this model: {len(names)} of {len(keys)} LoRA layers match its modules "
                             f"(first missing: {missing}); a LoRA for another architecture or base model?")
        ranks = {n: state[f"{KEY_PREFIX}{n}.lora_down.weight"].shape[0] for n in names}
        # a missing alpha means alpha = rank (scale 1), as ComfyUI's loader reads it
        alphas = {float(state.get(f"{KEY_PREFIX}{n}.alpha", torch.tensor(float(ranks[n])))) for n in names}
        adapter = cls({n: modules[n] for n in names}, ranks, alphas.pop() if len(alphas) == 1 else max(ranks.values()))
        adapter.load_lora_state_dict(state)
        return adapter

    def lora_state_dict(self) -> dict[str, torch.Tensor]:
        out = {}
        for name, layer in zip(self.names, self.layers):
            out[f"{KEY_PREFIX}{name}.lora_down.weight"] = layer.down.detach().clone()
            out[f"{KEY_PREFIX}{name}.lora_up.weight"] = layer.up.detach().clone()
            out[f"{KEY_PREFIX}{name}.alpha"] = layer.alpha.detach().clone()
        return out

    def load_lora_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for name, layer in zip(self.names, self.layers):
                layer.down.copy_(state[f"{KEY_PREFIX}{name}.lora_down.weight"].reshape(layer.down.shape))
                layer.up.copy_(state[f"{KEY_PREFIX}{name}.lora_up.weight"].reshape(layer.up.shape))
                # no alpha key: alpha = rank, ComfyUI's convention (not the adapter's default alpha)
                layer.alpha.copy_(state.get(f"{KEY_PREFIX}{name}.alpha", torch.tensor(float(layer.rank))))
                layer._scale_cache = None

    # ---- hooks ----------------------------------------------------------------------------
    def _plan(self) -> SamplePlan:
        """The per-sample plan of the current strength tensor, worked out once per forward, not per layer."""
        if getattr(self, "_plan_for", None) is not self.strength:
            self._plan_for, self._plan_value = self.strength, SamplePlan.of(self.strength)
        return self._plan_value

    def _hook(self, layer: LoraLayer):
        def hook(module, inputs, output):
            if isinstance(self.strength, torch.Tensor):
                return layer.apply_per_sample(inputs[0], output, self.strength, self._plan())
            if self.strength == 0.0:
                return output  # the frozen base, bit-exact and free
            return layer.apply(inputs[0], output, self.strength)

        return hook

    def install(self, diffusion_model: torch.nn.Module) -> None:
        """Register the hooks on the (shared) modules, and the in-place guards the model needs. Idempotent."""
        from .targets import inplace_input_modules

        self.remove()
        modules = dict(diffusion_model.named_modules())
        self._handles = [modules[n].register_forward_hook(self._hook(layer)) for n, layer in zip(self.names, self.layers)]
        self._guarded = inplace_input_modules(diffusion_model)
        for module in self._guarded:
            _guard_input(module)

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        for module in self._guarded:
            _unguard_input(module)
        self._guarded = []


GUARD = "_driftless_inplace_guard"  # [hook handle, number of installed adapters using it], in the module's __dict__


def _copy_recorded_input(module, args):
    """Forward pre-hook: the module reads a copy of its input when autograd records it (see the module docstring)."""
    if args and isinstance(args[0], torch.Tensor) and args[0].requires_grad and torch.is_grad_enabled():
        return (args[0].clone(), *args[1:])
    return None


def _guard_input(module: torch.nn.Module) -> None:
    """One guard per module, however many adapters are installed on the model (counted)."""
    guard = module.__dict__.get(GUARD)
    if guard is None:
        guard = module.__dict__[GUARD] = [module.register_forward_pre_hook(_copy_recorded_input), 0]
    guard[1] += 1


def _unguard_input(module: torch.nn.Module) -> None:
    guard = module.__dict__.get(GUARD)
    if guard is None:
        return
    guard[1] -= 1
    if guard[1] <= 0:
        guard[0].remove()
        del module.__dict__[GUARD]


def attach(patcher, adapters: list[LoraAdapter]) -> None:
    """Install the adapters' hooks through one injection on `patcher`: present only while that clone is
    the loaded model, removed when ComfyUI unloads it. A model of a family the pack does not support is refused
    here, naming it, before anything is hooked (every node that trains or guides attaches through this)."""
    from comfy.patcher_extension import PatcherInjection

    from .targets import check_supported

    check_supported(patcher, "attach a LoRA to")

    def inject(p):
        for adapter in adapters:
            adapter.to(p.load_device)
            adapter.install(p.model.diffusion_model)

    def eject(p):
        for adapter in adapters:
            adapter.remove()

    patcher.set_injections(INJECTION_KEY, [PatcherInjection(inject=inject, eject=eject)])


def check_rank(targets: dict[str, torch.nn.Module], rank: int) -> None:
    """A rank above min(in, out) of any layer wastes parameters and is almost always a typo."""
    if rank < 1:
        raise ValueError(f"LoRA rank must be at least 1, got {rank}")
    for name, module in targets.items():
        if isinstance(module, torch.nn.Conv2d):
            limit = min(module.in_channels * module.kernel_size[0] * module.kernel_size[1], module.out_channels)
        else:
            limit = min(module.in_features, module.out_features)
        if rank > limit:
            raise ValueError(
                f"LoRA rank {rank} is larger than layer {name} allows (min(in, out) = {limit}); "
                f"lower the rank or pick target layers without it"
            )
