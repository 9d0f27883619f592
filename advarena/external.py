"""External models: classifiers trained outside advarena, evaluated through the same protocols as
a defended model and never trained here (``advarena evaluate``, :func:`advarena.evaluate`).

Where a model comes from (its *source*, plain JSON in the cell spec):

* ``{"kind": "file", "path", "attr"}``: ``FILE.py:FACTORY``, a factory in a Python file, loaded
  by path under a prefixed module name (nothing is added to ``sys.path``);
* ``{"kind": "module", "module", "attr"}``: ``package.module:FACTORY``, an importable factory;
* ``{"kind": "zoo", "name"}``: a model a plugin package publishes through
  ``advarena_register_models`` (:class:`advarena.api.Model`);
* ``{"kind": "object", "class"}``: an ``nn.Module`` handed to :func:`advarena.evaluate`; it
  lives in this process only (found by its weights' hash), so its cells cannot run in worker
  processes.

A factory is called as ``FACTORY(info)`` when it takes a positional parameter (the dataset's
:class:`~advarena.api.DatasetInfo`), else as ``FACTORY()``; it returns an ``nn.Module`` mapping
inputs in the dataset's box to logits (wrapped in :class:`~advarena.models.Classifier` with the
dataset's bounds) or a ``Classifier`` (its own bounds and transform are kept). ``--weights``
is a safetensors file of the returned module's state dict, loaded strictly; without it the
factory's own weights are used. Weights are never unpickled.

Provenance and keys: the weights' SHA-256 (of the file, or of the safetensors serialisation of
the state dict) and the SHA-256 of the factory's source (the file, the module's source, the
zoo plugin's code version, the class's module) are part of the external train cell's spec, so
of every key that reads it. That cell loads the model, verifies both hashes again (a file
changed since planning fails the cell) and stores the weights like a trained model's, so the
eval cells are exactly those of a defended model. The training-cost protocol (which times the
defense's training) is skipped for external models. The reference and shared models it is
compared with are those of the suite's first architecture, once per seed (the seed drives the
attacks' randomness and the shared models).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import importlib
import inspect
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as st_load
from torch import nn

from .api.data import DatasetInfo
from .errors import AdvarenaError, StoreError
from .models import Classifier
from .store import _check_safetensors_header, sha256_bytes, tensors_to_bytes

# In-memory models handed to advarena.evaluate, by weights' SHA-256 (this process only).
_OBJECTS: dict[str, nn.Module] = {}


class ExternalModelError(AdvarenaError):
    """An external model that cannot be loaded as given (one line: what and how to fix)."""


@dataclasses.dataclass
class ExternalModel:
    """One external model as the planner needs it: a label, where it comes from and the two
    hashes that identify it."""

    label: str
    source: dict[str, Any]
    weights_sha256: str
    source_sha256: str
    architecture: str = "external"
    dataset: str | None = None  # a published model's own dataset
    weights_file: str | None = None

    def spec(self) -> dict[str, Any]:
        """What enters the external train cell's spec (and so every key that reads it)."""
        return {"label": self.label, "source": self.source,
                "weights_sha256": self.weights_sha256, "source_sha256": self.source_sha256,
                "weights_file": self.weights_file}

    def label_params(self) -> dict[str, Any]:
        """The row's ``params`` label: marks it as external and names its weights."""
        return {"external": describe_source(self.source),
                "weights_sha256": self.weights_sha256[:16]}


def describe_source(source: dict[str, Any]) -> str:
    kind = source.get("kind")
    if kind == "file":
        return f"{Path(source['path']).name}:{source['attr']}"
    if kind == "module":
        return f"{source['module']}:{source['attr']}"
    if kind == "zoo":
        return f"zoo:{source['name']}"
    return f"object:{source.get('class', '')}"


# -- loading -------------------------------------------------------------------------------------

def _module_from_file(path: Path) -> Any:
    """Import ``path`` under a prefixed name derived from its location (one module per file
    and process; nothing added to ``sys.path``)."""
    from .runner import _load_module

    resolved = path.resolve()
    digest = hashlib.sha256(str(resolved).encode()).hexdigest()[:10]
    stem = "".join(c if c.isalnum() else "_" for c in resolved.stem)
    try:
        return _load_module(f"advarena_external_{stem}_{digest}", str(resolved))
    except Exception as exc:
        raise ExternalModelError(f"importing {path} failed: {type(exc).__name__}: "
                                 f"{' '.join(str(exc).split())}") from None


def _source_hash_of_module(module: Any) -> str:
    try:
        text = inspect.getsource(module)
    except (OSError, TypeError):
        text = getattr(module, "__name__", repr(module))
    return hashlib.sha256(text.encode()).hexdigest()


def parse_model_option(text: str, registry: Any) -> dict[str, Any]:
    """``FILE.py:FACTORY``, ``package.module:FACTORY`` or a published model's name -> source."""
    text = text.strip()
    if ":" in text:
        left, attr = text.rsplit(":", 1)
        if not attr.isidentifier():
            raise ExternalModelError(f"--model {text}: '{attr}' is not a factory name; pass "
                                     f"FILE.py:FACTORY or package.module:FACTORY")
        path = Path(left)
        if left.endswith(".py") or path.exists():
            if not path.is_file():
                raise ExternalModelError(f"--model {text}: no file {left}")
            return {"kind": "file", "path": str(path.resolve()), "attr": attr}
        return {"kind": "module", "module": left, "attr": attr}
    try:
        entry = registry.entry("models", text)
    except AdvarenaError as exc:
        raise ExternalModelError(f"--model {text}: not FILE.py:FACTORY, package.module:FACTORY "
                                 f"or a published model ({exc})") from None
    return {"kind": "zoo", "name": entry.name}


def source_hash(source: dict[str, Any], registry: Any) -> str:
    kind = source["kind"]
    if kind == "file":
        try:
            return sha256_bytes(Path(source["path"]).read_bytes())
        except OSError as exc:
            raise ExternalModelError(f"cannot read {source['path']} ({exc.strerror})") from None
    if kind == "module":
        return _source_hash_of_module(_import(source["module"]))
    if kind == "zoo":
        from .plan import code_version

        return hashlib.sha256(code_version(registry.get("models", source["name"])).encode()) \
            .hexdigest()
    obj = _OBJECTS.get(source.get("weights_sha256", ""))
    cls = type(obj.net if isinstance(obj, Classifier) else obj)
    return _source_hash_of_module(inspect.getmodule(cls) or cls)


def _import(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except Exception as exc:
        raise ExternalModelError(f"cannot import module '{name}' ({type(exc).__name__}: {exc}); "
                                 f"pass --model FILE.py:FACTORY for a file") from None


def _call_factory(factory: Any, info: DatasetInfo, what: str) -> Any:
    if not callable(factory):
        raise ExternalModelError(f"{what} is not callable")
    try:
        params = [p for p in inspect.signature(factory).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
                  and p.default is p.empty]
    except (TypeError, ValueError):
        params = []
    try:
        return factory(info) if params else factory()
    except Exception as exc:
        raise ExternalModelError(f"{what} raised {type(exc).__name__}: {exc}") from None


def build_module(source: dict[str, Any], info: DatasetInfo, registry: Any) -> nn.Module:
    """The model's module as its source builds it (with the factory's own weights)."""
    kind = source["kind"]
    if kind == "object":
        obj = _OBJECTS.get(source.get("weights_sha256", ""))
        if obj is None:
            raise ExternalModelError("this model was handed to advarena.evaluate in another "
                                     "process; in-memory models run in that process only (use "
                                     "the local executor without a cell time limit, or pass a "
                                     "factory file)")
        return copy.deepcopy(obj)
    if kind == "zoo":
        model = registry.create("models", source["name"])
        out = _call_factory(model.build, info, f"published model '{source['name']}'.build")
        what = f"published model '{source['name']}'"
    else:
        module = (_module_from_file(Path(source["path"])) if kind == "file"
                  else _import(source["module"]))
        what = f"factory {describe_source(source)}"
        factory = getattr(module, source["attr"], None)
        if factory is None:
            raise ExternalModelError(f"{what}: the module has no '{source['attr']}'")
        out = _call_factory(factory, info, what)
    if not isinstance(out, nn.Module):
        raise ExternalModelError(f"{what} returned {type(out).__name__}, not a torch.nn.Module")
    return out


def _weights_bytes(source: dict[str, Any], weights_file: str | None, registry: Any,
                   module: nn.Module) -> bytes:
    if weights_file is not None:
        try:
            data = Path(weights_file).read_bytes()
        except OSError as exc:
            raise ExternalModelError(f"cannot read --weights {weights_file} "
                                     f"({exc.strerror})") from None
    elif source["kind"] == "zoo":
        w = registry.create("models", source["name"]).weights()
        data = w if isinstance(w, bytes) else Path(w).read_bytes()
        expected = getattr(registry.get("models", source["name"]), "sha256", "")
        if expected and sha256_bytes(data) != expected:
            raise ExternalModelError(f"published model '{source['name']}': its weights do not "
                                     f"match the SHA-256 it declares (damaged download?)")
    else:
        return tensors_to_bytes(module.state_dict())
    try:
        _check_safetensors_header(data)
    except StoreError:
        name = weights_file or f"the weights of '{source.get('name')}'"
        raise ExternalModelError(
            f"{name} is not a safetensors file; advarena never unpickles weights: save them "
            f"with safetensors.torch.save_file(model.state_dict(), 'weights.safetensors')") \
            from None
    return data


def _load_into(module: nn.Module, data: bytes, what: str) -> None:
    tensors = st_load(data)
    try:
        module.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        hint = ""
        if tensors and all(k.startswith("net.") for k in tensors) and \
                not isinstance(module, Classifier):
            hint = ("; they are an advarena Classifier's state dict (keys 'net.*'): return "
                    "advarena.models.Classifier(net) from the factory")
        first = " ".join(str(exc).split())[:300]
        raise ExternalModelError(f"{what}: the weights do not fit the model ({first})"
                                 f"{hint}") from None


def as_classifier(module: nn.Module, info: DatasetInfo) -> Classifier:
    """The module as attacks see it: a Classifier keeps its own box, a plain module gets the
    dataset's."""
    return module if isinstance(module, Classifier) else Classifier(module, info.bounds)


def load(ext: dict[str, Any], info: DatasetInfo, registry: Any, *,
         verify: bool = True) -> tuple[Classifier, str]:
    """Build the model of an external spec (or of a resolved source) and load its weights;
    return the classifier (eval mode, CPU) and its weights' SHA-256. With ``verify``, both the
    weights' and the source's hashes must equal the spec's (they entered the cells' keys)."""
    source = _runtime_source(ext)
    module = build_module(source, info, registry)
    data = _weights_bytes(source, ext.get("weights_file"), registry, module)
    digest = sha256_bytes(data)
    label = ext.get("label", describe_source(source))
    if verify:
        if digest != ext["weights_sha256"]:
            raise ExternalModelError(f"external model '{label}': its weights changed since the "
                                     f"run was planned (SHA-256 {digest[:12]}, expected "
                                     f"{ext['weights_sha256'][:12]}); run again")
        if source_hash(source, registry) != ext["source_sha256"]:
            raise ExternalModelError(f"external model '{label}': its factory's source changed "
                                     f"since the run was planned; run again")
    if ext.get("weights_file") is not None or source["kind"] == "zoo":
        _load_into(module, data, f"external model '{label}'")
    model = as_classifier(module, info).eval()
    return model, digest


def check_outputs(model: nn.Module, info: DatasetInfo, label: str) -> None:
    """One forward pass on two inputs of the dataset's shape: logits of its class count."""
    lo, hi = info.bounds
    x = torch.full((2, *info.input_shape), (lo + hi) / 2)
    try:
        with torch.no_grad():
            out = model(x)
    except Exception as exc:
        raise ExternalModelError(f"external model '{label}' fails on inputs of shape "
                                 f"{tuple(x.shape)} from dataset '{info.name}': "
                                 f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}") \
            from None
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, info.num_classes):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ExternalModelError(f"external model '{label}' returns {shape} for inputs of shape "
                                 f"{tuple(x.shape)}; dataset '{info.name}' needs logits of "
                                 f"shape (N, {info.num_classes})")


def _check_label(label: str, registry: Any) -> str:
    label = label.strip()
    if not label:
        raise ExternalModelError("--name must not be empty")
    try:
        registry.entry("defenses", label)
    except AdvarenaError:
        return label
    raise ExternalModelError(f"--name {label} is the name of a defense; pick another label so "
                             f"the rows stay apart")


def dataset_info(registry: Any, suite: Any, name: str, data_dir: Path | None,
                 download: bool) -> DatasetInfo:
    """The :class:`DatasetInfo` of dataset ``name`` with the suite's parameters."""
    ds = registry.create("datasets", name, **suite.dataset_params.get(name, {}))
    return ds.load(data_dir, download).info


def _runtime_source(ext: dict[str, Any]) -> dict[str, Any]:
    """The spec's source, plus what finds an in-memory model (its weights' hash)."""
    source = ext["source"]
    if source["kind"] == "object":
        return {**source, "weights_sha256": ext["weights_sha256"]}
    return source


def resolve(model: str | nn.Module, info: DatasetInfo, registry: Any, *,
            weights: str | Path | None = None, name: str | None = None) -> ExternalModel:
    """An :class:`ExternalModel` from ``--model`` text (or an in-memory module), validated: it
    builds, its weights load strictly, and it returns logits of the dataset's shape."""
    weights_file = str(Path(weights).resolve()) if weights is not None else None
    if weights_file is not None and not Path(weights_file).is_file():
        raise ExternalModelError(f"--weights {weights}: no such file")
    architecture, dataset = "external", None
    if isinstance(model, nn.Module):
        obj = copy.deepcopy(model).cpu()
        if weights_file is not None:
            _load_into(obj, _weights_bytes({"kind": "file"}, weights_file, registry, obj),
                       "the model")
            weights_file = None
        digest = sha256_bytes(tensors_to_bytes(obj.state_dict()))
        _OBJECTS[digest] = obj
        cls = type(obj.net if isinstance(obj, Classifier) else obj)
        source = {"kind": "object", "class": f"{cls.__module__}.{cls.__qualname__}"}
        default = cls.__name__
    elif isinstance(model, str):
        source = parse_model_option(model, registry)
        default = source.get("attr") or source.get("name")
        if source["kind"] == "zoo":
            cls = registry.get("models", source["name"])
            architecture = getattr(cls, "architecture", "") or "external"
            dataset = getattr(cls, "dataset", "") or None
        digest = ""
    else:
        raise TypeError(f"evaluate() takes a torch.nn.Module or 'FILE.py:FACTORY' text, not "
                        f"{type(model).__name__}")
    label = _check_label(name or str(default), registry)
    ext = {"label": label, "source": source, "weights_file": weights_file,
           "weights_sha256": digest}
    classifier, digest = load(ext, info, registry, verify=False)
    check_outputs(classifier, info, label)
    src_hash = source_hash(_runtime_source(ext), registry)
    return ExternalModel(label, source, digest, src_hash, architecture, dataset, weights_file)


def run_external(spec: dict[str, Any], info: DatasetInfo, registry: Any,
                 device: torch.device) -> tuple[Classifier, dict[str, Any]]:
    """What the external train cell does: load (never train) and verify; the classifier and
    the cell's result."""
    ext = spec["external"]
    model, _ = load(ext, info, registry, verify=True)
    check_outputs(model, info, ext["label"])
    result = {"external": ext, "trained": False,
              "num_parameters": sum(p.numel() for p in model.parameters())}
    return model.to(device).eval(), result


def build_untrained(spec: dict[str, Any], info: DatasetInfo, registry: Any) -> Classifier:
    """The classifier of an external train cell before the stored weights are loaded into it
    (what :meth:`advarena.runner.Environment.build_classifier` returns for it)."""
    return as_classifier(build_module(_runtime_source(spec["external"]), info, registry), info)
