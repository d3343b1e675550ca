"""Each branch of a guided batch through its own weights: the guider's LoRA layers at no extra cost.

The guider's clone carries the LoRA merged at strength 1 (W₁ = W + Δ, patched by ComfyUI as LoraLoader does). In
one batched forward the rows of the unconditional branch need other weights, W_c = W₁ + Σ_i c_i·Δ_i (the
personalization guider: c = s − 1 on the strong LoRA; autoguidance: −1 on the strong and +1 on the weak one), where
Δ_i = (α/r)·B_i·A_i. Each LoRA layer computes them in one of two ways, chosen per layer when the clone loads:

- split: a Linear layer whose weight stays on the device as it computes (no cast at each forward: not under lowvram,
  dynamic VRAM or a manual-cast/fp8 base) keeps W_c beside W₁ and multiplies each branch's rows by its own weight.
  For CFG's usual batch, two equal halves (ComfyUI batches the unconditional and the conditional rows together),
  both weights sit in one stacked tensor [2, out, in] and the layer is one batched GEMM (baddbmm): the multiply-adds
  and the kernel count of the stock layer's single GEMM, no correction kernels, so guidance costs what CFG of the
  personalized model costs. The module's own weight is re-pointed at W₁'s slot of the stack while the clone is
  loaded (and copied out of it when it unloads), so the stack costs one extra copy, not two. Any other batch layout
  multiplies each contiguous run by its branch's weight into one output. W_c is rebuilt with one rank-r update
  (W₁ + c·(α/r)·B·A, an addmm) when c changes (each step under a strength schedule). It costs one copy of the LoRA
  layers' weights, taken only while all of them fit in MEMORY_SHARE of the device's free memory.
- correct: every other layer (convolutions, weights cast at each forward, or not enough memory): the layer's output
  over the whole batch with W₁, then y += c·(α/r)·B(A(x)) on the rows that need it (lora/adapter.py's per-sample
  path, accumulated in place into their slice).
Both give the same function (to float rounding); tests/comfy/test_guider.py checks each against ComfyUI's
conditioning-hooks construction.
"""

import torch

from ..lora.adapter import LoraAdapter, SamplePlan

INJECTION_KEY = "driftless_guidance_layers"
MEMORY_SHARE = 0.5  # the most of the device's free memory the W_c copies may take


class BatchPlan:
    """Which correction each row of the current batch needs: contiguous runs (start, end, corrections), where
    corrections maps an adapter index to its c (empty: W₁ as merged). None outside a guided forward."""

    def __init__(self, runs: list[tuple[int, int, tuple]], rows: int, plain_math: bool):
        self.runs, self.rows = runs, rows
        self.corrected = any(corrections for _, _, corrections in runs)
        # CFG's usual layout: two equal halves, one of them as merged (W₁) and the other corrected
        two_halves = len(runs) == 2 and 2 * runs[0][1] == rows
        self.halves = (runs[0][2], runs[1][2]) if two_halves and (runs[0][2] == ()) != (runs[1][2] == ()) else None
        self.plain_math = plain_math  # no autocast: the layers compute in their weights' dtype
        self._strengths: dict[int, tuple] = {}

    def strength_of(self, index: int) -> tuple[torch.Tensor, SamplePlan] | None:
        """Adapter `index`'s correction per row [B] and its SamplePlan, worked out once per batch (not per layer);
        None where no row needs one."""
        if index not in self._strengths:
            strength = torch.zeros(self.rows, dtype=torch.float32)
            for start, end, corrections in self.runs:
                strength[start:end] = dict(corrections).get(index, 0.0)
            self._strengths[index] = (strength, SamplePlan.of(strength)) if bool(strength.any()) else None
        return self._strengths[index]

    @classmethod
    def for_batch(cls, tags: list[int], x: torch.Tensor, corrections_per_tag: dict) -> "BatchPlan":
        """The plan of batch `x`, made of one equal chunk per cond/uncond tag (ComfyUI's `cond_or_uncond`)."""
        per_tag = x.shape[0] // max(1, len(tags))
        runs = []
        for i, tag in enumerate(tags):
            corrections = tuple(sorted((k, v) for k, v in corrections_per_tag.get(tag, {}).items() if v != 0.0))
            start, end = i * per_tag, (i + 1) * per_tag
            if runs and runs[-1][2] == corrections:
                runs[-1] = (runs[-1][0], end, corrections)
            else:
                runs.append((start, end, corrections))
        return cls(runs, x.shape[0], plain_math=not torch.is_autocast_enabled(x.device.type))


class BranchLayers:
    """The guider's LoRA layers: forward overrides on the clone's modules while it is loaded (an injection), each
    computing its rows per `plan` by the split or the correct way (module docstring)."""

    def __init__(self, adapters: list[LoraAdapter], split: bool = True):
        self.adapters = adapters
        self.allow_split = split
        self.plan: BatchPlan | None = None
        self.names = sorted({n for a in adapters for n in a.names})  # every module a LoRA layer sits on
        self.modules: dict[str, torch.nn.Module] = {}
        self.split_names: set[str] = set()
        self._weights: dict[str, tuple] = {}  # module name -> (corrections, W_c), until the clone loads again
        self._stacks: dict[str, _Stack] = {}  # module name -> its [2, out, in] stack, until the clone unloads

    def layers_of(self, name: str) -> list[tuple[int, object]]:
        """(adapter index, LoraLayer) of every adapter that has a layer on module `name`."""
        return [(i, a.layers[a.names.index(name)]) for i, a in enumerate(self.adapters) if name in a.names]

    # ---- installation -----------------------------------------------------------------------
    def install(self, diffusion_model: torch.nn.Module, device) -> None:
        """Override the LoRA modules' forward (instance attributes, removed by `remove`). Idempotent."""
        self.remove()
        modules = dict(diffusion_model.named_modules())
        self.modules = {n: modules[n] for n in self.names}
        self.split_names = self._splittable(device)
        self._weights = {}
        for name, module in self.modules.items():
            module.forward = self._forward(name, module, module.forward)

    def remove(self) -> None:
        """Restore the modules' own forward. `split_names` stays, for inspection: what the last load chose."""
        for name, stack in self._stacks.items():
            stack.release(self.modules[name])
        for module in self.modules.values():
            module.__dict__.pop("forward", None)
        self.modules, self._weights, self._stacks = {}, {}, {}

    def _splittable(self, device) -> set[str]:
        """The Linear layers whose W_c copies can be held: weights resident as computed, and room for all of them."""
        if not self.allow_split:
            return set()
        eligible = {n for n, m in self.modules.items() if _weight_is_resident(m)}
        needed = sum(self.modules[n].weight.numel() * self.modules[n].weight.element_size() for n in eligible)
        return eligible if needed <= MEMORY_SHARE * _free_memory(device) else set()

    # ---- forward --------------------------------------------------------------------------
    def _forward(self, name: str, module: torch.nn.Module, original):
        """The module's forward while the guider's clone is loaded. Read once here, not per call: the layer's
        weight, bias and width stay as ComfyUI loaded them until it loads the clone again (which installs anew)."""
        layers = self.layers_of(name)
        split = name in self.split_names
        weight, bias = (module.weight, module.bias) if split else (None, None)

        def forward(x, *args, **kwargs):
            plan = self.plan
            if plan is None or not plan.corrected:
                return original(x, *args, **kwargs)
            if split and plan.plain_math and not args and not kwargs and x.dtype == weight.dtype:
                if plan.halves:
                    return self._stacked(name, module, x, plan, layers)
                return self._split(name, weight, bias, x, plan, layers)
            return correct(original(x, *args, **kwargs), x, plan, layers)

        return forward

    def _stacked(self, name, module, x, plan: BatchPlan, layers) -> torch.Tensor:
        """Both halves of the batch in one baddbmm against [W₁, W_c] stacked in the halves' order. A strided input (the
        text or image slice of a joint attention's output, which SD3's and Flux's projections get) is read in place
        where its halves are a batch stride apart, else copied once: either way one GEMM, as stock CFG's forward."""
        stack = self._stacks.get(name)
        if stack is None or not stack.fits(plan.halves):
            if stack is not None:
                stack.release(module)
            stack = self._stacks[name] = _Stack(module, plan.halves)
        weights = stack.weights(plan.halves, layers)  # [2, in, out], a transposed view
        rows = x.reshape(2, -1, x.shape[-1])
        out = torch.bmm(rows, weights) if module.bias is None else torch.baddbmm(module.bias, rows, weights)
        return out.view(*x.shape[:-1], weights.shape[-1])

    def _split(self, name, merged, bias, x, plan: BatchPlan, layers) -> torch.Tensor:
        width = merged.shape[0]
        out = x.new_empty(*x.shape[:-1], width)
        for start, end, corrections in plan.runs:
            weight = self._weight(name, merged, corrections, layers) if corrections else merged
            rows, target = x[start:end].reshape(-1, x.shape[-1]), out[start:end].view(-1, width)
            if bias is None:
                torch.mm(rows, weight.t(), out=target)
            else:
                torch.addmm(bias, rows, weight.t(), out=target)
        return out

    def _weight(self, name, merged, corrections: tuple, layers) -> torch.Tensor:
        """W_c for `corrections`, rebuilt only when they change (each step under a strength schedule)."""
        cached = self._weights.get(name)
        if cached is not None and cached[0] == corrections:
            return cached[1]
        weight = merged.detach().clone() if cached is None else cached[1].copy_(merged)
        _add_corrections(weight, corrections, layers)
        self._weights[name] = (corrections, weight)
        return weight


class _Stack:
    """One Linear layer's [W₁, W_c] in one tensor [2, out, in], slot `plain` holding W₁ and shared with the module's
    weight (re-pointed at it, so W₁ is not held twice), the other holding W_c for `corrections`."""

    def __init__(self, module: torch.nn.Module, halves: tuple):
        self.plain = halves.index(())
        weight = module.weight
        self.inference = weight.is_inference()  # the stack and the copy given back are made like the weight was
        with torch.inference_mode(self.inference):
            self.tensor = weight.new_empty(2, *weight.shape)
        self.tensor[self.plain].copy_(weight)
        weight.data = self.tensor[self.plain]
        self.transposed = self.tensor.transpose(1, 2)  # bmm's right operand, made once (a view per call costs ~1 µs)
        self.corrections = None

    def fits(self, halves: tuple) -> bool:
        """W₁ in the same half as when built (else a new stack: the module's weight would have to move)."""
        return halves[self.plain] == ()

    def weights(self, halves: tuple, layers) -> torch.Tensor:
        """The stack as bmm's right operand [2, in, out], its W_c slot rebuilt when the corrections change."""
        corrections = halves[1 - self.plain]
        if corrections != self.corrections:
            corrected = self.tensor[1 - self.plain]
            corrected.copy_(self.tensor[self.plain])
            _add_corrections(corrected, corrections, layers)
            self.corrections = corrections
        return self.transposed

    def release(self, module: torch.nn.Module) -> None:
        """Give the module a weight of its own again (a copy of W₁), so the stack is freed with this object."""
        weight = module.weight
        if weight.data_ptr() == self.tensor[self.plain].data_ptr():
            with torch.inference_mode(self.inference):
                weight.data = weight.data.clone()


def _add_corrections(weight: torch.Tensor, corrections: tuple, layers) -> None:
    """weight += Σ c·(α/r)·B·A over the (adapter index, c) pairs, in place."""
    by_adapter = dict(layers)
    for index, c in corrections:
        layer = by_adapter[index]
        up, down = layer.up.to(weight.device, weight.dtype), layer.down.to(weight.device, weight.dtype)
        weight.addmm_(up, down, alpha=c * layer.scale_value())


def correct(output: torch.Tensor, x: torch.Tensor, plan: BatchPlan, layers) -> torch.Tensor:
    """y += c·(α/r)·B(A(x)) on each run's rows, per adapter with a correction there."""
    for index, layer in layers:
        per_row = plan.strength_of(index)
        if per_row is not None:
            output = layer.apply_per_sample(x, output, *per_row)
    return output


def _weight_is_resident(module: torch.nn.Module) -> bool:
    """A Linear that multiplies with its own weight tensor: not cast, patched or streamed at each forward."""
    if not isinstance(module, torch.nn.Linear) or getattr(module, "comfy_cast_weights", False):
        return False
    if getattr(module, "weight_function", None) or getattr(module, "bias_function", None):
        return False
    weight = getattr(module, "weight", None)
    return isinstance(weight, torch.Tensor) and weight.is_floating_point() and weight.device.type != "meta"


def _free_memory(device) -> int:
    import comfy.model_management

    return comfy.model_management.get_free_memory(device)


def attach_branch_layers(patcher, branch_layers: BranchLayers) -> None:
    """Install `branch_layers` through one injection on the guider's clone: present only while it is loaded."""
    from comfy.patcher_extension import PatcherInjection

    def inject(p):
        for adapter in branch_layers.adapters:
            adapter.to(p.load_device)
        branch_layers.install(p.model.diffusion_model, p.load_device)

    def eject(p):
        branch_layers.remove()

    patcher.set_injections(INJECTION_KEY, [PatcherInjection(inject=inject, eject=eject)])
