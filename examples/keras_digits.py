"""A Keras 3 model on the torch backend, trained on scikit-learn's bundled digits by two workers
and returned to the caller with its trained weights. With KERAS_BACKEND=torch a keras.Model is
an nn.Module; TensorFlow users switch the backend the same way (one line, before importing
keras)."""

import os

os.environ["KERAS_BACKEND"] = "torch"  # before keras is imported; the workers inherit it

import keras
import numpy as np
from sklearn.datasets import load_digits

from ai_distributed_training import DistributedTraining

digits = load_digits()
X = (digits.data / 16.0).astype(np.float32)  # 1797 images as 64 pixel values
y = digits.target


def keras_mlp():
    return keras.Sequential(
        [keras.Input((64,)), keras.layers.Dense(64, activation="relu"), keras.layers.Dense(10)]
    )


result = DistributedTraining().train_distributed(
    keras_mlp, (X, y), nodes=2, epochs=10, batch_size=64, learning_rate=3e-3, runs_dir=None
)
model = result.model  # the trained keras.Model, usable as Keras or as an nn.Module
predicted = np.argmax(keras.ops.convert_to_numpy(model(X[:200])), axis=1)
print(f"validation accuracy {result['metrics']['val_accuracy']:.3f}")
print(f"accuracy of the returned model on 200 images: {np.mean(predicted == y[:200]):.3f}")
