"""The computation graph of a supported model as a list of ops, for the manifest.

Each op is a JSON object ``{"op", "inputs", "output", ...}`` whose tensors are named by
strings (``"image"`` is the network's input, the last op's output its logits):

* ``conv``       ``layer`` (its path), ``strides``, ``padding``: a quantized conv (NHWC, HWIO);
* ``dense``      ``layer``: a quantized dense layer (``(in, out)`` kernel, bias);
* ``batch_norm`` ``layer``, ``epsilon``: BatchNorm with running statistics, in float;
* ``relu``, ``add`` (two inputs), ``max_pool`` (``window``, ``strides``, VALID),
  ``global_mean`` (mean over H and W): float.

The graphs follow the models' ``__call__`` exactly (:mod:`jaxquant.models.small_cnn`,
:mod:`jaxquant.models.vgg`, :mod:`jaxquant.models.resnet` with basic blocks); any other
model is a one-line error (:data:`SUPPORTED_MODELS`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn

from jaxquant.models.resnet import BasicBlock, CifarResNet
from jaxquant.models.small_cnn import SmallCNN
from jaxquant.models.vgg import StagedCNN

BN_EPSILON = nn.BatchNorm.epsilon  # the models' BatchNorm keeps flax's default
SUPPORTED_MODELS = ("small_cnn", "cnn6", "resnet20", "resnet18")


@dataclasses.dataclass
class GraphBuilder:
    """Appends ops, naming each output ``t<i>``; ``roles`` maps a layer path to its policy role."""

    ops: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    roles: dict[str, str] = dataclasses.field(default_factory=dict)

    def add_op(self, op: str, inputs: list[str], **fields) -> str:
        output = f"t{len(self.ops)}"
        self.ops.append({"op": op, "inputs": inputs, "output": output, **fields})
        return output

    def conv(self, x: str, layer: str, role: str, strides: int = 1) -> str:
        self.roles[layer] = role
        return self.add_op("conv", [x], layer=layer, strides=[strides, strides], padding="SAME")

    def dense(self, x: str, layer: str, role: str) -> str:
        self.roles[layer] = role
        return self.add_op("dense", [x], layer=layer)

    def batch_norm(self, x: str, layer: str) -> str:
        return self.add_op("batch_norm", [x], layer=layer, epsilon=BN_EPSILON)

    def relu(self, x: str) -> str:
        return self.add_op("relu", [x])

    def max_pool(self, x: str) -> str:
        return self.add_op("max_pool", [x], window=[2, 2], strides=[2, 2])


def small_cnn_graph(model: SmallCNN, image_shape: tuple[int, ...]) -> GraphBuilder:
    graph, x, height = GraphBuilder(), "image", image_shape[0]
    for i, _ in enumerate(model.widths):
        x = graph.conv(x, f"conv{i}", "first" if i == 0 else "middle")
        x = graph.relu(graph.batch_norm(x, f"bn{i}"))
        if height >= 16 and i < len(model.widths) - 1:
            x, height = graph.max_pool(x), height // 2
    graph.dense(graph.add_op("global_mean", [x]), "head", "last")
    return graph


def staged_cnn_graph(model: StagedCNN, image_shape: tuple[int, ...]) -> GraphBuilder:
    graph, x, index = GraphBuilder(), "image", 0
    for stage, widths in enumerate(model.stages):
        for _ in widths:
            x = graph.conv(x, f"conv{index}", "first" if index == 0 else "middle")
            x = graph.relu(graph.batch_norm(x, f"bn{index}"))
            index += 1
        if stage < len(model.stages) - 1:
            x = graph.max_pool(x)
    graph.dense(graph.add_op("global_mean", [x]), "head", "last")
    return graph


def resnet_graph(model: CifarResNet, image_shape: tuple[int, ...]) -> GraphBuilder:
    graph = GraphBuilder()
    x = graph.relu(graph.batch_norm(graph.conv("image", "stem", "first"), "stem_bn"))
    features = model.widths[0]
    for i, (blocks, width) in enumerate(zip(model.stage_sizes, model.widths, strict=True)):
        for j in range(blocks):
            strides, block = (2 if i > 0 and j == 0 else 1), f"stage{i}_block{j}"
            y = graph.conv(x, f"{block}/conv1", "middle", strides)
            y = graph.relu(graph.batch_norm(y, f"{block}/bn1"))
            y = graph.batch_norm(graph.conv(y, f"{block}/conv2", "middle"), f"{block}/bn2")
            if features != width or strides != 1:
                x = graph.batch_norm(graph.conv(x, f"{block}/proj", "middle", strides), f"{block}/bn_proj")
            x, features = graph.relu(graph.add_op("add", [y, x])), width
    graph.dense(graph.add_op("global_mean", [x]), "head", "last")
    return graph


GRAPHS = {SmallCNN: small_cnn_graph, StagedCNN: staged_cnn_graph, CifarResNet: resnet_graph}


def check_supported(model_name: str) -> None:
    """A one-line error for a model the integer evaluator does not cover (ViT attention,
    MobileNet's depthwise convs, bottleneck ResNets)."""
    if model_name not in SUPPORTED_MODELS:
        raise ValueError(
            f"model.name={model_name!r} is not supported by the integer evaluator: "
            f"supported {', '.join(SUPPORTED_MODELS)}"
        )


def model_graph(model: nn.Module, model_name: str, image_shape: tuple[int, ...]) -> GraphBuilder:
    """The ops of ``model`` for images of ``image_shape`` (H, W, C)."""
    check_supported(model_name)
    build = GRAPHS.get(type(model))
    if build is None or (isinstance(model, CifarResNet) and model.block is not BasicBlock):
        check_supported(type(model).__name__)
    return build(model, tuple(image_shape))
