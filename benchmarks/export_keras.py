"""Export the Keras fixtures of the zoo sweep through tf2onnx: tests/data/keras/<name>.onnx and <name>.npz (a batch
of inputs and Keras's own output for it), so that the tests run without TensorFlow.

Needs TensorFlow and tf2onnx, which `make test` does not install (too heavy); in a separate environment:

    python3 -m venv /tmp/tfenv && /tmp/tfenv/bin/pip install tensorflow-cpu==2.21.0 tf2onnx==1.17.0 onnxruntime==1.31.1
    /tmp/tfenv/bin/python benchmarks/export_keras.py [--out tests/data/keras]

Models (fixed seeds; Keras's initialisers, then "trained-like" weights: every bias, BatchNorm scale, offset, moving
mean and variance made non-trivial, since Keras's fresh zeros and ones are folded away by TensorFlow's grappler):
- mlp_sequential: keras.Sequential Dense(32, relu) -> Dense(16, relu) -> Dense(10) on 20 features;
- mlp_functional: the functional API with a residual Add and a Concatenate of two branches;
- cnn_bn: Conv2D -> BatchNormalization -> ReLU -> MaxPool -> DepthwiseConv2D -> BatchNormalization -> ReLU ->
  Conv2D -> BatchNormalization -> ReLU -> GlobalAveragePooling -> Dense, channels-last 16x16x3;
- mobilenetv2: keras.applications.MobileNetV2(weights=None, alpha=0.1, classes=10) on 32x32x3 (alpha 0.1 is the
  smallest width, every layer of the architecture kept; the fixture is 420 KB at alpha 0.1, 1.7 MB at 0.35);
- resnet50: keras.applications' ResNet50 built by keras's own ResNet(stack_fn) and stack_residual_blocks_v1 with
  ResNet50's depths (3, 4, 6, 3 bottleneck blocks) and every stage's width divided by 32 (the full model is 94 MB),
  weights=None, classes=10, 32x32x3.
Each export is checked: onnxruntime on the ONNX file gives Keras's output (1e-4 relative), else the script fails.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
OPSET = 17
BATCH = 2


def mlp_sequential(keras):
    """Sequential MLP 20-32-16-10."""
    return keras.Sequential([keras.Input((20,)), keras.layers.Dense(32, activation="relu"),
                             keras.layers.Dense(16, activation="relu"), keras.layers.Dense(10)])


def mlp_functional(keras):
    """Functional MLP: two branches concatenated, a residual Add, a linear head."""
    x = keras.Input((20,))
    a = keras.layers.Dense(16, activation="relu")(x)
    b = keras.layers.Dense(16, activation="tanh")(x)
    h = keras.layers.Concatenate()([a, b])
    h = keras.layers.Dense(32, activation="relu")(h)
    h = keras.layers.Add()([h, keras.layers.Dense(32)(x)])
    return keras.Model(x, keras.layers.Dense(10)(h))


def cnn_bn(keras):
    """A small channels-last CNN with BatchNorm after a regular and a depthwise convolution."""
    L = keras.layers
    x = keras.Input((16, 16, 3))
    h = L.ReLU()(L.BatchNormalization()(L.Conv2D(8, 3, padding="same")(x)))
    h = L.MaxPooling2D(2)(h)
    h = L.ReLU()(L.BatchNormalization()(L.DepthwiseConv2D(3, padding="same", use_bias=False)(h)))
    h = L.ReLU()(L.BatchNormalization()(L.Conv2D(16, 1, use_bias=False)(h)))
    return keras.Model(x, L.Dense(10)(L.GlobalAveragePooling2D()(h)))


def mobilenetv2(keras):
    """keras.applications.MobileNetV2, alpha 0.1, 32x32."""
    return keras.applications.MobileNetV2(input_shape=(32, 32, 3), alpha=0.1, weights=None, classes=10)


def resnet50(keras):
    """keras.applications' ResNet50 (its ResNet builder and bottleneck stacks) at 1/32 of the widths, 32x32."""
    from keras.src.applications.resnet import ResNet, stack_residual_blocks_v1

    def stack_fn(x):
        x = stack_residual_blocks_v1(x, 2, 3, stride1=1, name="conv2")
        x = stack_residual_blocks_v1(x, 4, 4, name="conv3")
        x = stack_residual_blocks_v1(x, 8, 6, name="conv4")
        return stack_residual_blocks_v1(x, 16, 3, name="conv5")

    return ResNet(stack_fn, preact=False, use_bias=True, name="resnet50", weights=None,
                  input_shape=(32, 32, 3), classes=10)


MODELS = {f.__name__: f for f in (mlp_sequential, mlp_functional, cnn_bn, mobilenetv2, resnet50)}


def trained_like(model, rng: np.random.Generator) -> None:
    """Biases ~ 0.1 N(0, 1); BatchNorm gamma 1 + 0.2 N, beta 0.1 N, moving mean 0.1 N, moving variance U(0.5, 1.5)."""
    import keras
    for layer in model.layers:
        weights = layer.get_weights()
        if not weights:
            continue
        if isinstance(layer, keras.layers.BatchNormalization):
            gamma, beta, mean, var = weights
            weights = [1 + 0.2 * rng.standard_normal(gamma.shape), 0.1 * rng.standard_normal(beta.shape),
                       0.1 * rng.standard_normal(mean.shape), rng.uniform(0.5, 1.5, var.shape)]
        elif getattr(layer, "use_bias", False):
            weights[-1] = 0.1 * rng.standard_normal(weights[-1].shape)
        layer.set_weights([w.astype(np.float32) for w in weights])


def export(name: str, out: Path) -> None:
    """Build, perturb, convert, check against Keras and write <out>/<name>.onnx and .npz."""
    import keras
    import onnx
    import onnxruntime as ort
    import tensorflow as tf
    import tf2onnx
    keras.utils.set_random_seed(0)
    model = MODELS[name](keras)
    rng = np.random.default_rng(1)
    trained_like(model, rng)
    shape = tuple(model.inputs[0].shape[1:])
    x = rng.standard_normal((BATCH,) + shape).astype(np.float32)
    reference = np.asarray(model(x, training=False))
    spec = [tf.TensorSpec((None,) + shape, tf.float32, name="input")]
    # from_keras fails on Keras 3 Sequential models (KeyError on the output's name): convert the call instead
    call = tf.function(lambda inputs: model(inputs, training=False), input_signature=spec)
    proto, _ = tf2onnx.convert.from_function(call, input_signature=spec, opset=OPSET)
    proto.ir_version = min(proto.ir_version, 10)  # onnxruntime 1.31 reads at most IR 13
    path = out / f"{name}.onnx"
    onnx.save(proto, str(path))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x})[0]
    error = float(np.max(np.abs(got - reference)) / np.max(np.abs(reference)))
    if error > 1e-4:
        raise SystemExit(f"error: {name}: onnxruntime differs from Keras by {error:.1e}")
    np.savez(out / f"{name}.npz", input=x, keras_output=reference)
    print(f"{name}: {len(proto.graph.node)} nodes, {path.stat().st_size / 1024:.0f} KB, "
          f"onnxruntime vs Keras {error:.1e} (TensorFlow {tf.__version__}, Keras {keras.__version__}, "
          f"tf2onnx {tf2onnx.__version__})")


def main(argv=None) -> int:
    """Export every fixture (or the named ones)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help=f"models to export (default: all of {', '.join(MODELS)})")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "tests/data/keras")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.names or list(MODELS):
        if name not in MODELS:
            raise SystemExit(f"error: unknown model {name!r} (known: {', '.join(MODELS)})")
        export(name, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
