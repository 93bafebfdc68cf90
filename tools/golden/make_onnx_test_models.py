#!/usr/bin/python3
"""Tiny ONNX files for tests/test_onnx_import.cpp, written to tests/fixtures/onnx/.
Every file here is generated; regenerate with `/usr/bin/python3 tools/golden/make_onnx_test_models.py`,
never edit. Seeded (SEED below); versions go to tests/fixtures/onnx/meta.json.

  view_input.onnx       torch, dynamic batch: x.view(x.size(0), -1) and x.reshape(x.size(0) * 3, 16)
                        applied to the graph input itself (only Shape of a graph input to fold)
  conv_view.onnx        torch, dynamic batch: Conv -> BN -> ReLU -> view(size(0), -1) -> Linear,
                        exported with TrainingMode.PRESERVE so the BN stays in the file
  conv_bn.onnx          torch, static: conv_a (no bias) -> bn_a, conv_b (bias) -> bn_b, and conv_c whose
                        output feeds bn_c and a ReLU (must not be folded); PRESERVE keeps the BNs
  conv_bn_expected_{a,b}_{weight,bias}.pb
                        TensorProto files: torch.nn.utils.fusion.fuse_conv_bn_weights of a and b
  unsupported.onnx      torch GELU (-> Erf) and einsum (-> Einsum), plus a node of a custom domain and
                        a dead Erf whose output nothing reads (must not be reported)
  constants.onnx        onnx.helper, opset 13, nodes in shuffled order: Constant nodes as Clip min/max,
                        Unsqueeze/Squeeze axes and Dropout ratio; Shape/Gather/Slice/Concat/Cast/Range/
                        ConstantOfShape chains on the dynamic input; one unnamed node; one dead node
  old_style.onnx        onnx.helper, IR 3 / opset 9: initializers listed as graph inputs, float_data storage
  external_data.onnx    an initializer whose data_location is EXTERNAL
  batch_constant.onnx   Add(x, ConstantOfShape(Shape(x))): a weight that would depend on the batch size
"""

import io
import json
import os
import random

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

SEED = 1234
OPSET = 13
REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
OUT_DIR = os.path.join(REPO_ROOT, "tests", "fixtures", "onnx")


def export(model, args, path, dynamic, training=torch.onnx.TrainingMode.EVAL, output_names=("y",)):
    f = io.BytesIO()
    dynamic_axes = None
    if dynamic:
        dynamic_axes = {"x": {0: "batch"}}
        for name in output_names:
            dynamic_axes[name] = {0: "batch"}
    torch.onnx.export(model, args, f, opset_version=OPSET, input_names=["x"], output_names=list(output_names),
                      dynamic_axes=dynamic_axes, training=training,
                      do_constant_folding=training == torch.onnx.TrainingMode.EVAL)
    proto = onnx.load_from_string(f.getvalue())
    onnx.checker.check_model(proto)
    save(proto, path)
    return proto


def save(proto, name):
    # Serialized directly: onnx.save would try to resolve external data.
    with open(os.path.join(OUT_DIR, name), "wb") as f:
        f.write(proto.SerializeToString())


def randomize_bn(bn, generator):
    with torch.no_grad():
        c = bn.num_features
        bn.weight.copy_(torch.rand(c, generator=generator) + 0.5)
        bn.bias.copy_(torch.randn(c, generator=generator))
        bn.running_mean.copy_(torch.randn(c, generator=generator))
        bn.running_var.copy_(torch.rand(c, generator=generator) + 0.25)


class ViewInput(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(48, 5)

    def forward(self, x):
        y = self.fc(x.view(x.size(0), -1))
        z = x.reshape(x.size(0) * 3, 16)
        return y, z


class ConvView(torch.nn.Module):
    def __init__(self, generator):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(4)
        self.fc = torch.nn.Linear(4 * 4 * 4, 5)
        randomize_bn(self.bn, generator)

    def forward(self, x):
        y = torch.relu(self.bn(self.conv(x)))
        return self.fc(y.view(y.size(0), -1))


class ConvBN(torch.nn.Module):
    def __init__(self, generator):
        super().__init__()
        self.conv_a = torch.nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.bn_a = torch.nn.BatchNorm2d(4, eps=1e-3)
        self.conv_b = torch.nn.Conv2d(4, 6, 1, bias=True)
        self.bn_b = torch.nn.BatchNorm2d(6)
        self.conv_c = torch.nn.Conv2d(3, 2, 1)
        self.bn_c = torch.nn.BatchNorm2d(2)
        for bn in (self.bn_a, self.bn_b, self.bn_c):
            randomize_bn(bn, generator)

    def forward(self, x):
        y = self.bn_b(self.conv_b(self.bn_a(self.conv_a(x))))
        c = self.conv_c(x)
        return y, self.bn_c(c) + torch.relu(c)


class Unsupported(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(4, 4))

    def forward(self, x):
        g = torch.nn.functional.gelu(torch.relu(x))
        return torch.einsum("bij,jk->bik", g, self.w)


def make_constants_model(rng):
    f32, i64 = TensorProto.FLOAT, TensorProto.INT64

    def const(name, array):
        return helper.make_node("Constant", [], [name], name=name + "_node",
                                value=numpy_helper.from_array(np.asarray(array), name=""))

    nodes = [
        # Clip with Constant min (value_float) and max (tensor) inputs; this node has no name.
        helper.make_node("Constant", [], ["c_min"], name="c_min_node", value_float=0.0),
        const("c_max", np.array(6.0, dtype=np.float32)),
        helper.make_node("Clip", ["x", "c_min", "c_max"], ["clip_out"]),
        # Reshape target [N, 3, -1] from Slice(Shape(x)) and a Constant.
        helper.make_node("Shape", ["x"], ["x_shape"], name="shape_x"),
        const("slice_starts", np.array([0], dtype=np.int64)),
        const("slice_ends", np.array([2], dtype=np.int64)),
        helper.make_node("Slice", ["x_shape", "slice_starts", "slice_ends"], ["n_c"], name="slice_nc"),
        const("minus_one", np.array([-1], dtype=np.int64)),
        helper.make_node("Concat", ["n_c", "minus_one"], ["target"], name="concat_target", axis=0),
        helper.make_node("Reshape", ["clip_out", "target"], ["r"], name="reshape_r"),
        # Unsqueeze/Squeeze with Constant axes (value_ints), Dropout with a constant ratio.
        helper.make_node("Constant", [], ["axes_1"], name="axes_1_node", value_ints=[1]),
        helper.make_node("Unsqueeze", ["r", "axes_1"], ["r_u"], name="unsqueeze_r"),
        helper.make_node("Squeeze", ["r_u", "axes_1"], ["r_s"], name="squeeze_r"),
        const("ratio", np.array(0.1, dtype=np.float32)),
        helper.make_node("Dropout", ["r_s", "ratio"], ["r_d"], name="dropout_r"),
        helper.make_node("ReduceMean", ["r_d"], ["y"], name="mean_y", axes=[2], keepdims=0),
        # k = float(x.shape[-3]) through a negative Gather index; rng = float(range(0, C, 1)),
        # half = ConstantOfShape([C], 0.5).
        const("idx_c", np.array(-3, dtype=np.int64)),
        helper.make_node("Gather", ["x_shape", "idx_c"], ["c_dim"], name="gather_c", axis=0),
        helper.make_node("Cast", ["c_dim"], ["k"], name="cast_k", to=f32),
        const("zero", np.array(0, dtype=np.int64)),
        const("one", np.array(1, dtype=np.int64)),
        helper.make_node("Range", ["zero", "c_dim", "one"], ["range_i"], name="range_c"),
        helper.make_node("Cast", ["range_i"], ["rng"], name="cast_rng", to=f32),
        helper.make_node("Constant", [], ["axes_0"], name="axes_0_node", value_ints=[0]),
        helper.make_node("Unsqueeze", ["c_dim", "axes_0"], ["c_vec"], name="unsqueeze_c"),
        helper.make_node("ConstantOfShape", ["c_vec"], ["half"], name="half_of_shape",
                         value=numpy_helper.from_array(np.array([0.5], dtype=np.float32), name="")),
        helper.make_node("Mul", ["y", "k"], ["yk"], name="mul_k"),
        helper.make_node("Add", ["yk", "rng"], ["ykr"], name="add_rng"),
        helper.make_node("Add", ["ykr", "half"], ["z"], name="add_half"),
        # Dead: nothing reads its output.
        helper.make_node("Relu", ["x"], ["unused"], name="dead_relu"),
    ]
    graph = helper.make_graph(
        nodes, "constants",
        [helper.make_tensor_value_info("x", f32, ["N", 3, 4, 4])],
        [helper.make_tensor_value_info("y", f32, ["N", 3]), helper.make_tensor_value_info("z", f32, ["N", 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="make_onnx_test_models")
    onnx.checker.check_model(model)  # while still sorted: the checker insists on it
    shuffled = list(model.graph.node)
    rng.shuffle(shuffled)  # the importer must sort them
    del model.graph.node[:]
    model.graph.node.extend(shuffled)
    return model


def make_old_style_model(rng):
    w = rng_normal(rng, (2, 3, 3, 3))
    b = rng_normal(rng, (2,))
    w_init = helper.make_tensor("W", TensorProto.FLOAT, w.shape, w.flatten().tolist())  # float_data, not raw
    b_init = numpy_helper.from_array(b, name="B")  # raw_data
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "W", "B"], ["c"], name="conv", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["c"], ["y"], name="relu")],
        "old_style",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 5, 5]),
         helper.make_tensor_value_info("W", TensorProto.FLOAT, list(w.shape)),
         helper.make_tensor_value_info("B", TensorProto.FLOAT, list(b.shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 5, 5])],
        initializer=[w_init, b_init])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 9)], producer_name="make_onnx_test_models")
    model.ir_version = 3
    return model


def make_external_data_model():
    w = helper.make_tensor("W", TensorProto.FLOAT, [2, 3, 1, 1], [0.0] * 6)
    w.ClearField("float_data")
    w.data_location = TensorProto.EXTERNAL
    entry = w.external_data.add()
    entry.key, entry.value = "location", "weights.bin"
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "W"], ["y"], name="conv", kernel_shape=[1, 1])], "external",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 2, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 2, 2])], initializer=[w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])


def make_batch_constant_model():
    graph = helper.make_graph(
        [helper.make_node("Shape", ["x"], ["s"], name="shape"),
         helper.make_node("ConstantOfShape", ["s"], ["ones"], name="ones_like_x",
                          value=numpy_helper.from_array(np.array([1.0], dtype=np.float32), name="")),
         helper.make_node("Add", ["x", "ones"], ["y"], name="add_ones")],
        "batch_constant",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])


def rng_normal(rng, shape):
    return np.asarray([rng.gauss(0.0, 1.0) for _ in range(int(np.prod(shape)))], dtype=np.float32).reshape(shape)


def main():
    os.makedirs(OUT_DIR, exist_ok=True)
    torch.manual_seed(SEED)
    torch.set_num_threads(2)
    generator = torch.Generator().manual_seed(SEED)
    rng = random.Random(SEED)

    export(ViewInput().eval(), torch.randn(2, 3, 4, 4), "view_input.onnx", dynamic=True, output_names=("y", "z"))
    export(ConvView(generator).eval(), torch.randn(2, 3, 4, 4), "conv_view.onnx", dynamic=True,
           training=torch.onnx.TrainingMode.PRESERVE)

    conv_bn = ConvBN(generator).eval()
    export(conv_bn, torch.randn(1, 3, 5, 5), "conv_bn.onnx", dynamic=False,
           training=torch.onnx.TrainingMode.PRESERVE, output_names=("y", "c_out"))
    for tag, conv, bn in (("a", conv_bn.conv_a, conv_bn.bn_a), ("b", conv_bn.conv_b, conv_bn.bn_b)):
        w, b = torch.nn.utils.fusion.fuse_conv_bn_weights(conv.weight, conv.bias, bn.running_mean, bn.running_var,
                                                           bn.eps, bn.weight, bn.bias)
        for part, t in (("weight", w), ("bias", b)):
            proto = numpy_helper.from_array(t.detach().numpy().astype(np.float32), name=f"conv_{tag}.{part}")
            with open(os.path.join(OUT_DIR, f"conv_bn_expected_{tag}_{part}.pb"), "wb") as f:
                f.write(proto.SerializeToString())

    proto = export(Unsupported().eval(), torch.randn(1, 2, 4), "unsupported.onnx", dynamic=False)
    g = proto.graph
    relu_out = next(n.output[0] for n in g.node if n.op_type == "Relu")
    g.node.append(helper.make_node("Erf", [relu_out], ["dead_out"], name="dead_erf"))
    g.node.append(helper.make_node("Foo", [relu_out], ["foo_out"], name="custom_foo", domain="com.example"))
    g.output.append(helper.make_tensor_value_info("foo_out", TensorProto.FLOAT, [1, 2, 4]))
    proto.opset_import.append(helper.make_opsetid("com.example", 1))
    save(proto, "unsupported.onnx")

    for name, model in (("constants.onnx", make_constants_model(rng)), ("old_style.onnx", make_old_style_model(rng)),
                        ("external_data.onnx", make_external_data_model()),
                        ("batch_constant.onnx", make_batch_constant_model())):
        if name in ("old_style.onnx", "batch_constant.onnx"):
            onnx.checker.check_model(model)
        save(model, name)

    meta = {"generator": "tools/golden/make_onnx_test_models.py", "seed": SEED, "opset": OPSET,
            "torch": torch.__version__, "onnx": onnx.__version__, "numpy": np.__version__}
    with open(os.path.join(OUT_DIR, "meta.json"), "w") as f:
        json.dump(meta, f, indent=2)
        f.write("\n")
    total = sum(os.path.getsize(os.path.join(OUT_DIR, n)) for n in os.listdir(OUT_DIR))
    print(f"wrote {len(os.listdir(OUT_DIR))} files, {total} bytes, to {OUT_DIR}")


if __name__ == "__main__":
    main()
